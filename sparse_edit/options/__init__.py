"""Validated options for every command: one typed field per setting, whose description is its --help.

A run can be described by a TOML file; command-line flags override it. Paths are relative to the
current directory. One module per concern: the base class and merging (``base``), model loading
(``model``), prompt selection (``prompts``), each strategy's own settings (``strategies``), and each command's own settings.
"""

from sparse_edit.options.apply import ApplyOptions, depth_fraction
from sparse_edit.options.base import Options, load_options, read_config
from sparse_edit.options.evaluate import EvalOptions
from sparse_edit.options.locate import LocateOptions
from sparse_edit.options.model import ModelOptions
from sparse_edit.options.prompts import PromptOptions
from sparse_edit.options.strategies import (
    DetectorMode,
    DetectorOptions,
    DetectorPushAt,
    DetectorResponse,
    NeuronChoice,
    OutputOptions,
    PaperOptions,
)
from sparse_edit.options.tune import TuneOptions

__all__ = [
    "ApplyOptions",
    "DetectorMode",
    "DetectorPushAt",
    "DetectorResponse",
    "DetectorOptions",
    "EvalOptions",
    "LocateOptions",
    "ModelOptions",
    "NeuronChoice",
    "Options",
    "OutputOptions",
    "PaperOptions",
    "PromptOptions",
    "TuneOptions",
    "depth_fraction",
    "load_options",
    "read_config",
]
