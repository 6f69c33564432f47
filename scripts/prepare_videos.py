"""Re-encode a dataset's videos for training: smaller H.264 mp4 with a fixed keyframe interval.

The flags live in :mod:`patches.cli.prepare_videos`, the work in :mod:`patches.data.prepare`;
``python scripts/prepare_videos.py --help`` lists the flags."""
import sys

from patches.cli.prepare_videos import main

if __name__ == "__main__":
    sys.exit(main())
