"""Re-encode a dataset's videos for training: smaller H.264 mp4 with a fixed keyframe interval.

The code lives in :mod:`patches.data.prepare`; ``python scripts/prepare_videos.py --help`` lists the flags."""
import sys

from patches.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
