"""The command line: the `fapn-*` console scripts and `python -m fapn_hf COMMAND` (one dialect, `commands`)."""

from .commands import (
    COMMANDS,
    benchmark_main,
    build_space_main,
    convert_main,
    create_model_main,
    evaluate_main,
    export_onnx_main,
    main,
    predict_main,
    push_main,
)

__all__ = [
    "COMMANDS",
    "benchmark_main",
    "build_space_main",
    "convert_main",
    "create_model_main",
    "evaluate_main",
    "export_onnx_main",
    "main",
    "predict_main",
    "push_main",
]
