"""COCO box mAP of an exported model through onnxruntime or OpenVINO.

The code is in ``rtdetr_spartan/cli/eval_onnx.py``; the same tool is ``rtdetr-spartan val --onnx``.
"""

from rtdetr_spartan.cli.eval_onnx import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
