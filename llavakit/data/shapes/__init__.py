"""Shapes world: a procedural visual-QA data set (scenes of coloured shapes, questions, answers).

``scene`` renders, ``questions`` asks and answers, ``generate`` builds splits and
writes them (LLaVA JSON and HF messages). Entry point: :func:`generate_shapes`.
"""

from llavakit.data.shapes.generate import HELD_OUT, ShapesConfig, generate_shapes, make_sample
from llavakit.data.shapes.questions import FAMILIES
from llavakit.data.shapes.scene import COLORS, SHAPES, WORDS

__all__ = ["COLORS", "FAMILIES", "HELD_OUT", "SHAPES", "WORDS", "ShapesConfig", "generate_shapes", "make_sample"]
