"""Move the KV cache inside the language model (OpenVINO "stateful" models).

A stateless IR takes the whole cache as inputs and returns it as outputs on
every step — copying gigabytes per token for a 7B model. Stateful IR keeps each
cache tensor in a variable (ReadValue/Assign) that lives in the infer request,
so a decode step passes one token's embedding and nothing else. This is the
layout OpenVINO GenAI expects, including a ``beam_idx`` input that reorders
the cache rows (beam search) before each step; for one sequence it is ``[0]``.

Steps, in order: name the cache inputs/outputs, insert the ``beam_idx`` Gather
in front of every cache input, let OpenVINO's MakeStateful pass turn the
input/output pairs into variables, then give each variable an initial value of
shape (batch, heads, 0, head_dim) computed from the current batch size.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
from openvino import opset13 as ops
from openvino._offline_transformations import apply_make_stateful_transformation


def add_beam_idx(model: ov.Model, cache_inputs: list[str], batch_input: str = "inputs_embeds") -> None:
    """Add the ``beam_idx`` (B,) input and gather every cache input's batch rows by it."""
    batch = model.input(batch_input).get_partial_shape()[0]
    beam_idx = ops.parameter(ov.PartialShape([batch]), ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    model.add_parameters([beam_idx])
    for name in cache_inputs:
        port = model.input(name)
        consumers = list(port.get_target_inputs())
        gathered = ops.gather(port, beam_idx, ops.constant(0))  # (B, H_kv, P, d) rows reordered
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
    model.validate_nodes_and_infer_types()


def make_stateful(model: ov.Model, cache_pairs: dict[str, str], batch_input: str = "inputs_embeds") -> None:
    """Turn cache input/output pairs into state variables that start empty for any batch size."""
    apply_make_stateful_transformation(model, cache_pairs)
    source = model.input(batch_input)
    batch = ops.gather(ops.shape_of(source, output_type="i64"), ops.constant([0]), ops.constant(0))  # (1,)
    for op in model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        dims = list(op.get_output_partial_shape(0))  # (B?, H_kv, ?, d)
        parts = [batch] + [ops.constant(np.array([d.get_length() if d.is_static else 0], dtype=np.int64))
                           for d in dims[1:]]
        zeros = ops.broadcast(ops.constant(0.0, dtype=op.get_output_element_type(0)), ops.concat(parts, axis=0))
        op.set_arguments([zeros])
    model.validate_nodes_and_infer_types()
