"""The MLflow pyfunc model of a trial, logged "from code": MLflow stores this file with the model instead of a
pickled class, and runs it when the model is loaded (``mlflow.pyfunc.load_model("runs:/<id>/model")``), in an
environment where nas is installed. The model's one artifact, ``model``, is a saved-model folder
(:mod:`nas.saved`: safetensors weights, the resolved architecture, the task).

``predict`` takes a batch of the task's inputs as an array (token ids ``(B, T)``, int64, for a text or recall
task) and returns the model's outputs as a float32 array: logits per position ``(B, T, V)`` for a causal task,
per sequence ``(B, classes)`` otherwise. Loading it needs MLflow; ``nas.load_model`` does not.
"""

from __future__ import annotations

from typing import Any

import mlflow.models
import numpy as np
import torch
from mlflow.pyfunc import PythonModel


class TrialModel(PythonModel):
    """A trial's trained model, compressed as it was measured."""

    def load_context(self, context: Any) -> None:
        from nas.saved import load_saved

        self.model = load_saved(context.artifacts["model"]).model

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Outputs for a batch of inputs (a DataFrame's values are taken as the array)."""
        values = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        x = torch.as_tensor(values)
        x = x.float() if x.is_floating_point() else x.long()  # pixel patches, or token ids
        with torch.inference_mode():
            return self.model(x).float().numpy()


mlflow.models.set_model(TrialModel())
