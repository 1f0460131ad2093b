"""Cube layout: which cube and time slab each video token belongs to."""

from .layout import TEXT, CubeLayout, VideoSpan, cube_layout, frame_pair_spans, token_coordinates, video_spans

__all__ = ["TEXT", "CubeLayout", "VideoSpan", "cube_layout", "frame_pair_spans", "token_coordinates", "video_spans"]
