"""A PyTorch model as an evaluation predictor: numpy images in, numpy logits out."""
from __future__ import annotations

import numpy as np
import torch


class TorchPredictor:
    def __init__(self, model: torch.nn.Module, device: str = "cpu"):
        self.model, self.device = model.eval().to(device), device

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(images).to(self.device)).float().cpu().numpy()
