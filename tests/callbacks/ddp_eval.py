"""Standalone job for the DDP equality test: AdversarialEvaluation in trainer.test on N CPU processes
(gloo), rank 0 writes the callback's metrics and the test-set size as JSON.

python -m tests.callbacks.ddp_eval --checkpoint C.ckpt --devices 2 --output out.json
"""

from __future__ import annotations

import argparse
import json

import lightning as L

from attacks.gradient import BIM, FGSM, PGD
from callbacks.attack_eval import AdversarialEvaluation
from datamodules import SyntheticFundusDataModule
from lightning_modules.classifier import ClassifierModule


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-samples", type=int, default=110)
    args = parser.parse_args()

    module = ClassifierModule.load_from_checkpoint(args.checkpoint, weights_only=True)
    datamodule = SyntheticFundusDataModule(
        num_samples=args.num_samples, size=64, seed=3, batch_size=8, test_fraction=0.3
    )
    callback = AdversarialEvaluation(
        {
            "fgsm": lambda eps: FGSM(eps=eps),
            "bim": lambda eps: BIM(eps=eps, steps=3),
            "pgd": lambda eps: PGD(eps=eps, steps=3, random_start=False),
        },
        epsilons=[2 / 255, 8 / 255],
    )
    robust = AdversarialEvaluation(  # robust-accuracy mode: correct samples only, per-sample random starts
        {"pgd": lambda eps: PGD(eps=eps, steps=3)}, epsilons=[8 / 255], robust_accuracy_only=True, brisque=False
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback, robust],
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    if trainer.is_global_zero:
        with open(args.output, "w") as handle:
            metrics = callback.results | {f"robust/{name}": value for name, value in robust.results.items()}
            json.dump({"metrics": metrics, "test_size": len(datamodule.datasets["test"])}, handle)


if __name__ == "__main__":
    main()
