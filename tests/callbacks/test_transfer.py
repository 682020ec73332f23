"""TransferEvaluation: the success-rate matrix crafted-from x attacked, white-box on the diagonal."""

from __future__ import annotations

import copy

import lightning as L
import pytest

from attacks.gradient import FGSM
from callbacks.transfer import TransferEvaluation


@pytest.mark.slow
def test_unknown_model_names_are_rejected(fitted_classifier):
    module, _ = fitted_classifier
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        TransferEvaluation({"fgsm": lambda eps: FGSM(eps=eps)}, {"twin": module}, epsilons=[1 / 255], targets=["nope"])
    with pytest.raises(ValueError, match="reserved"):
        TransferEvaluation({"fgsm": lambda eps: FGSM(eps=eps)}, {"tested": module}, epsilons=[1 / 255])


@pytest.mark.slow
def test_an_identical_model_transfers_like_white_box(fitted_classifier):
    module, datamodule = fitted_classifier
    twin = copy.deepcopy(module)
    callback = TransferEvaluation(
        {"fgsm": lambda eps: FGSM(eps=eps)}, {"twin": twin}, epsilons=[8 / 255],
        sources=["tested", ["tested", "twin"]],
    )
    trainer = L.Trainer(
        accelerator="cpu", logger=False, callbacks=[callback], enable_progress_bar=False, enable_model_summary=False
    )
    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    matrix = callback.matrix["fgsm/8_255"]
    assert set(matrix) == {"tested", "tested+twin"}
    assert matrix["tested"]["tested"] > 0.3
    # the twin has the same weights: crafted on one, the other is fooled exactly as often
    assert matrix["tested"]["twin"] == pytest.approx(matrix["tested"]["tested"])
    assert matrix["tested+twin"]["twin"] == pytest.approx(matrix["tested"]["tested"])
    assert results["transfer/fgsm/8_255/tested->twin/success_rate"] == pytest.approx(matrix["tested"]["twin"])
