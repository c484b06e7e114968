"""CodeNorm: per-feature standardisation of the pooled code across prompts."""
import torch

from encoders import EncoderConfig, WordTokenizer, build_encoder
from encoders.encoder import CodeNorm


def test_batch_statistics_in_training_running_in_eval():
    norm = CodeNorm(features=3, momentum=0.5)
    x = torch.tensor([[1.0, 2.0, 10.0], [3.0, 2.0, 14.0]])
    y = norm.train()(x)
    mean, var = x.mean(0), x.var(0, unbiased=False)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + norm.eps))
    torch.testing.assert_close(norm.running_mean, 0.5 * mean)
    torch.testing.assert_close(norm.running_var, 0.5 * torch.ones(3) + 0.5 * var)
    # Eval mode and a single prompt use the running statistics, so rows are independent.
    ref = (x - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    torch.testing.assert_close(norm.eval()(x), ref)
    torch.testing.assert_close(norm.train()(x[:1]), ref[:1])


def test_codes_of_different_prompts_are_decorrelated():
    captions = [f"a {s} {c} {shape} on the {p}" for s in ("small", "large") for c in ("red", "blue", "green")
                for shape in ("circle", "square") for p in ("left", "right")]
    tok = WordTokenizer.build(captions)
    torch.manual_seed(0)
    raw = build_encoder(EncoderConfig(code_dim=32, code_norm=False), len(tok))
    normed = build_encoder(EncoderConfig(code_dim=32, code_norm=True), len(tok))
    loaded = normed.load_state_dict(raw.state_dict(), strict=False)  # same weights; only CodeNorm's buffers differ
    assert set(loaded.missing_keys) == {"code_norm.running_mean", "code_norm.running_var"}
    assert not loaded.unexpected_keys

    def mean_cosine(encoder):
        p = torch.nn.functional.normalize(encoder.train()(tok(captions)).pooled, dim=1)
        cos = p @ p.T
        n = len(captions)
        return ((cos.sum() - cos.diagonal().sum()) / (n * (n - 1))).item()

    assert mean_cosine(raw) > 0.5  # the shared words dominate the raw readout
    assert abs(mean_cosine(normed)) < 0.1
