"""Everything torch/PyG: graph tensors, the encoder, checkpoints and batched inference."""

from operators.checkpoint import Checkpoint
from operators.encoder import EncoderConfig, GraphEncoder
from operators.forward_process import ForwardProcess
from operators.incremental import IncrementalPolicy, UserDelta
from operators.inference import Embedder, set_threads
from operators.item_index import ItemIndex, stable_hash
from operators.tensors import GraphBatch, graphs_to_batch

__all__ = [
    "Checkpoint",
    "Embedder",
    "EncoderConfig",
    "ForwardProcess",
    "GraphBatch",
    "GraphEncoder",
    "IncrementalPolicy",
    "ItemIndex",
    "UserDelta",
    "graphs_to_batch",
    "set_threads",
    "stable_hash",
]
