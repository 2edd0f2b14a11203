"""Test helper (not a test module): write speech in any container and codec with PyAV."""

from fractions import Fraction

import av
import numpy as np


def encode(path, speech, codec, rate=16_000, channels=1, video=False, options=None):
    """Write `speech` (16 kHz mono) as `path` with audio `codec` at `rate` Hz and `channels` channels (the same
    signal in each), plus a 64x48 black video stream when `video`; the container follows the extension."""
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w") as container:
        if video:
            picture = container.add_stream("mpeg4", rate=10)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(np.repeat(speech[None], channels, axis=0), format="fltp", layout=layout)
        frame.rate, frame.pts, frame.time_base = 16_000, 0, Fraction(1, 16_000)
        resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate)
        for f in resampler.resample(frame) + resampler.resample(None):
            container.mux(stream.encode(f))
        container.mux(stream.encode(None))
        if video:
            black = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            for _ in range(int(len(speech) / 16_000 * 10)):
                container.mux(picture.encode(black))
            container.mux(picture.encode(None))
