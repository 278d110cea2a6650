"""JPEG header sniffing: which files the GPU decoder may take, decided from their bytes.

nvjpeg decodes plain 8-bit YCbCr or greyscale JPEGs exactly enough (features within the stated
tolerance of PIL's), but is not the reference: a file it might read differently from PIL (CMYK/YCCK
or RGB-coded JPEGs: Adobe transform flag 0, or components named R, G, B; 12-bit; arithmetic or
lossless coding; unusual chroma sampling) or that PIL would reject (a truncated file, which a GPU
decoder need not report; a decompression bomb) is left to the PIL path, which decodes it the
reference way or raises the reference error.
Parsing stops at the frame header, so it costs microseconds per file.
"""
from __future__ import annotations

from dataclasses import dataclass

_SOF_GPU = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman coded)
_SOF_ALL = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # every frame header (DHT, JPG, DAC are not)
_STANDALONE = set(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, TEM: no length field
_LUMA_SAMPLING = {(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (4, 2)}  # 4:4:4 4:2:2 4:4:0 4:2:0 4:1:1 4:1:0
_RGB_COMPONENT_IDS = (0x52, 0x47, 0x42)  # 'R', 'G', 'B': libjpeg treats the file as RGB, not YCbCr
_EOI_WINDOW = 64  # bytes at the end searched for the end-of-image marker (trailing padding allowed)


@dataclass(frozen=True)
class JpegInfo:
    """Frame facts of a JPEG file: ``width`` x ``height`` pixels, ``channels`` 1 (grey) or 3."""

    width: int
    height: int
    channels: int


def gpu_decodable(data: bytes | memoryview, max_pixels: int | None) -> JpegInfo | None:
    """The frame facts when ``data`` is a JPEG the GPU decoder may take, else None (use PIL).

    Args:
        data: the whole file.
        max_pixels: PIL's decompression-bomb threshold (``Image.MAX_IMAGE_PIXELS``); larger
            images go to PIL, which raises its own error for them.
    """
    size = len(data)
    if size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    if bytes(data[max(2, size - _EOI_WINDOW):]).find(b"\xff\xd9") < 0:
        return None  # truncated (or long trailing data): PIL decides
    position, adobe_transform = 2, None
    while position + 4 <= size:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _STANDALONE:
            if marker == 0xD9:
                return None  # end of image before any frame
            position += 2
            continue
        length = (data[position + 2] << 8) | data[position + 3]
        segment = position + 4
        if length < 2 or position + 2 + length > size:
            return None
        if marker == 0xEE and length >= 14 and bytes(data[segment:segment + 5]) == b"Adobe":
            adobe_transform = data[segment + 11]  # 0: RGB (or CMYK), 1: YCbCr, 2: YCCK
        if marker == 0xDA:
            return None  # a scan before any frame header
        if marker in _SOF_ALL:
            return _frame(data, marker, segment, length - 2, max_pixels, adobe_transform)
        position += 2 + length
    return None


def _frame(data, marker: int, start: int, length: int, max_pixels: int | None,
           adobe_transform: int | None) -> JpegInfo | None:
    if marker not in _SOF_GPU or length < 6:
        return None
    precision = data[start]
    height = (data[start + 1] << 8) | data[start + 2]
    width = (data[start + 3] << 8) | data[start + 4]
    channels = data[start + 5]
    if precision != 8 or channels not in (1, 3) or width == 0 or height == 0 or length < 6 + 3 * channels:
        return None
    if max_pixels is not None and width * height > max_pixels:
        return None
    if channels == 3:
        components = [data[start + 6 + 3 * c: start + 9 + 3 * c] for c in range(3)]
        if adobe_transform not in (None, 1) or (adobe_transform is None and
                                                tuple(c[0] for c in components) == _RGB_COMPONENT_IDS):
            return None  # RGB-coded: no YCbCr conversion; PIL's reading is the reference
        sampling = [(c[1] >> 4, c[1] & 0x0F) for c in components]
        if sampling[0] not in _LUMA_SAMPLING or sampling[1] != (1, 1) or sampling[2] != (1, 1):
            return None
    return JpegInfo(width, height, channels)
