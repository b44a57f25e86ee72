"""The benchmark model (`benchmarks/big_model.py`): the seed's contract and a real backbone's
size, with outputs the service accepts as a working model's."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import numpy_helper

from benchmarks.big_model import benchmark_spec, resnet_localizer
from utils.dsp.preprocessing import preprocess
from utils.dsp.synthetic import generate_scenes


def test_resnet18_has_the_seed_contract_and_a_backbone_size() -> None:
    spec = benchmark_spec()
    model, params, macs = resnet_localizer(spec, "resnet18", seed=0)
    # the reported count is what the graph holds (an independent sum over its initialisers)
    held = sum(
        numpy_helper.to_array(t).size
        for t in model.graph.initializer
        if t.name.startswith(("w_", "b_", "fc_", "fcb_"))
    )
    assert held == params
    assert 10e6 < params < 12e6  # ResNet-18 without its 1000-class head: 11.2 M
    assert 0.1e9 < macs < 0.2e9  # 1.8 GMAC at 224 x 224, scaled to 128 x 32
    assert [i.name for i in model.graph.input] == ["mel_spectrogram"]
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 128, 32]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    scenes = generate_scenes(4, seed=1, spec=spec)
    x = preprocess(scenes.iq, spec).astype(np.float32)
    positions, sigmas = session.run(["positions", "uncertainties"], {"mel_spectrogram": x})
    assert positions.shape == (4, 2) and sigmas.shape == (4, 2)
    centroid = np.mean([[r.latitude, r.longitude] for r in spec.receivers], axis=0)
    assert np.all(np.abs(positions - centroid) <= 1.0 + 1e-5)
    assert np.all((sigmas >= 0.02) & (sigmas <= 0.32 + 1e-6))
    # a deterministic, seeded build
    again, _, _ = resnet_localizer(spec, "resnet18", seed=0)
    assert again.SerializeToString() == model.SerializeToString()
