"""Quality report arithmetic on known tensors (the real before/after run is in test_quantize)."""

from __future__ import annotations

import math

import pytest

from steps.quality import compare, mean_nll
from steps.recipes import Quality

torch = pytest.importorskip("torch")


def _ids_and_logits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 32, (1, 12), generator=generator)
    logits = torch.randn(1, 12, 32, generator=generator)
    return ids, logits


def _report(before: torch.Tensor, after: torch.Tensor, ids: torch.Tensor, **gates: float):
    return compare(
        before=before,
        after=after,
        input_ids=ids,
        text_source="test",
        input_bytes=400,
        output_bytes=100,
        gates=Quality(**gates),
    )


def test_identical_logits_are_perfect() -> None:
    ids, logits = _ids_and_logits()
    report = _report(logits, logits.clone(), ids)
    assert report.relative_logits_error == 0.0
    assert report.top1_agreement == 1.0
    assert report.nll_before == report.nll_after
    assert report.perplexity_before == pytest.approx(math.exp(report.nll_before))
    assert report.size_ratio == 0.25
    assert report.passed


def test_mean_nll_matches_a_hand_computation() -> None:
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = 10.0  # predicts token 2 confidently
    ids = torch.tensor([[0, 2, 1]])
    expected_first = -torch.log_softmax(logits[0, 0], -1)[2]
    expected_second = -torch.log_softmax(logits[0, 1], -1)[1]  # uniform: log 4
    assert mean_nll(logits, ids) == pytest.approx(float(expected_first + expected_second) / 2)
    assert float(expected_second) == pytest.approx(math.log(4))


def test_relative_error_and_top1_of_a_perturbation() -> None:
    ids, logits = _ids_and_logits()
    noise = torch.randn_like(logits)
    after = logits + 0.1 * noise
    report = _report(logits, after, ids)
    assert report.relative_logits_error == pytest.approx(
        float((0.1 * noise).norm() / logits.norm()), rel=1e-5
    )
    flipped = _report(logits, -logits, ids)
    assert flipped.relative_logits_error == pytest.approx(2.0)
    assert flipped.top1_agreement == 0.0


def test_gates_fail_with_reasons() -> None:
    ids, logits = _ids_and_logits()
    report = _report(logits, -logits, ids, max_relative_logits_error=0.05, min_top1_agreement=0.9)
    assert not report.passed
    assert any("relative logits error" in failure for failure in report.failures)
    assert any("top-1 agreement" in failure for failure in report.failures)
    assert _report(logits, logits, ids, max_relative_logits_error=0.05).passed


def test_shape_mismatch_is_refused() -> None:
    ids, logits = _ids_and_logits()
    with pytest.raises(ValueError, match="shapes differ"):
        _report(logits, logits[:, :-1], ids)
