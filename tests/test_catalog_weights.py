"""Weights per rank from the model config, per quant (issue 11 §2), against the sizes memory.md and
the real vLLM 0.24.0 load report."""

from __future__ import annotations

import pytest

from glmdeploy.catalog import MODEL_ARCHS, weights_per_rank

FLASH = MODEL_ARCHS["glm-4.7-flash"]
GIB = 2**30
# The MTP layer's own embed_tokens + shared_head copies ship in the checkpoint (memory.md §1.2:
# 0.634 B params, BF16) but the engines share the target's, so they are not loaded.
MTP_OWN_EMBED_HEAD_GB = 0.634e9 * 2 / 1e9


def test_bf16_tp1_is_the_real_load_of_55_87_gib() -> None:
    # real-vllm-0.24.0: "Model loading took 55.87 GiB memory". Tolerance 0.5%.
    w = weights_per_rank(FLASH, "bf16", 1, speculative=False)
    assert w is not None and w.method == "config"
    assert w.main_gib == pytest.approx(55.87, rel=0.005)
    assert w.draft_gib == 0


@pytest.mark.parametrize(
    ("quant", "checkpoint_gb", "tolerance"),
    [
        ("bf16", 62.4, 0.01),  # memory.md §1.3 zai-org/GLM-4.7-Flash, incl. MTP
        ("nvfp4", 20.4, 0.05),  # GadflyII/GLM-4.7-Flash-NVFP4
        ("awq", 18.4, 0.05),  # QuantTrio/GLM-4.7-Flash-AWQ
        ("fp8", 32.0, 0.05),  # community FP8, 31-33 GB derived
    ],
)
def test_every_quant_adds_up_to_its_checkpoint(quant: str, checkpoint_gb: float, tolerance: float) -> None:
    w = weights_per_rank(FLASH, quant, 1, speculative=True)
    assert w is not None
    on_disk = w.total_gib * GIB / 1e9 + MTP_OWN_EMBED_HEAD_GB
    assert on_disk == pytest.approx(checkpoint_gb, rel=tolerance)


def test_tp_splits_all_but_the_replicated_tensors_and_shards_the_vocab() -> None:
    one = weights_per_rank(FLASH, "bf16", 1, speculative=True)
    two = weights_per_rank(FLASH, "bf16", 2, speculative=True)
    four = weights_per_rank(FLASH, "bf16", 4, speculative=True)
    assert one and two and four
    # Embeddings and head split by vocabulary: 154,880 rows (a multiple of 64 x 4) exactly halve.
    assert two.parts_gib["embeddings_and_head"] == pytest.approx(one.parts_gib["embeddings_and_head"] / 2)
    # q_a/kv_a projections are replicated: attention shrinks by less than half.
    assert one.parts_gib["attention"] / 2 < two.parts_gib["attention"] < one.parts_gib["attention"]
    # Norms, gates and buffers are on every rank in full.
    assert four.parts_gib["norms_gates_buffers"] == pytest.approx(one.parts_gib["norms_gates_buffers"])
    # memory.md §1.2: 55.8 / 28.0 / 14.1 GiB main model at TP 1/2/4.
    assert (one.main_gib, two.main_gib, four.main_gib) == pytest.approx((55.8, 28.0, 14.1), abs=0.1)
    assert four.draft_gib == pytest.approx(one.draft_gib / 4, rel=0.05)


def test_quantised_layers_and_bands() -> None:
    nvfp4 = weights_per_rank(FLASH, "nvfp4", 1, speculative=False)
    bf16 = weights_per_rank(FLASH, "bf16", 1, speculative=False)
    assert nvfp4 and bf16
    # NVFP4 keeps MLA attention and embeddings BF16; only experts and the dense MLP shrink.
    assert nvfp4.parts_gib["attention"] == pytest.approx(bf16.parts_gib["attention"])
    assert nvfp4.parts_gib["experts"] == pytest.approx(bf16.parts_gib["experts"] * (0.5 + 1 / 16) / 2)
    assert (bf16.relative_band, nvfp4.relative_band) == (0.005, 0.03)
    # Models without shapes in the catalogue are left to the checkpoint-size fallback.
    assert weights_per_rank(MODEL_ARCHS["glm-4.7"], "fp8", 4, speculative=True) is None
