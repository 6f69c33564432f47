"""Fine-tune and test a video action classifier, from any checkpoint, at any patch grid; or only test
(``--eval``), or train a frozen-feature probe (``--probe``).

The flags and the run live in :mod:`patches.cli.finetune`; ``python run_class_finetuning.py --help`` lists them."""
from patches.utils import cpu_memory  # noqa: F401  # isort: skip  (first: allocator settings torch reads once)
from patches.cli.finetune import get_args_parser, main

if __name__ == "__main__":
    main(get_args_parser().parse_args())
