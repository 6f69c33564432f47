"""The decoders' own stderr lines (FFmpeg's "moov atom not found", decord's C++ log lines) stay out of the tools'
output: a broken video gives PATCHES's one reason, and nothing else on file descriptor 2."""
import os
import re
from pathlib import Path

import numpy as np
import pytest

from patches.data.quiet_decoders import decoder_stderr_silenced
from patches.data.video_reader import VideoDecodeError, VideoFile

DECORD_LINE = re.compile(r"^\[[0-9:]+\] \S+\.cc:[0-9]+", re.M)


@pytest.mark.parametrize("backend", ["auto", "decord"])
def test_a_truncated_mp4_fails_with_one_reason_and_no_decoder_lines(demo_root: Path, tmp_path: Path, capfd,
                                                                     backend: str) -> None:
    video = next((demo_root / "videos").glob("*.mp4"))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(video.read_bytes()[:2000])  # cut before its index: "moov atom not found"
    with pytest.raises(VideoDecodeError, match=f"cannot decode video {truncated}: cannot be opened as a video"):
        VideoFile(str(truncated), backend).read(np.arange(4))
    err = capfd.readouterr().err
    assert "moov atom" not in err and not DECORD_LINE.search(err), err
    assert VideoFile(str(video), backend).read(np.arange(4)).shape[0] == 4, "a good file still reads"


def test_stderr_comes_back_after_the_block_and_the_variable_keeps_the_lines(capfd, monkeypatch) -> None:
    with decoder_stderr_silenced():
        with decoder_stderr_silenced():  # nested (threads may overlap): restored by the outer one only
            os.write(2, b"inner\n")
        os.write(2, b"outer\n")
    os.write(2, b"after\n")
    monkeypatch.setenv("PATCHES_DECODER_LOGS", "1")
    with decoder_stderr_silenced():
        os.write(2, b"kept\n")
    assert capfd.readouterr().err == "after\nkept\n"
