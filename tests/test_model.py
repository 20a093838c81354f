"""The network: layer shapes, parameter count, LRN against the paper's formula, init, small inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexkit.model import MIN_INPUT_SIZE, AlexNet, build_from_checkpoint, feature_size, local_response_norm


def _lrn_paper(a: np.ndarray, n: int, alpha: float, beta: float, k: float, columns: int) -> np.ndarray:
    """The paper's formula, one channel at a time, in float64: b_i = a_i / (k + alpha * sum a_j^2)^beta,
    j from max(0, i - n/2) to min(N - 1, i + n/2) within the column; alpha here is the paper's own."""
    out = np.empty_like(a, dtype=np.float64)
    per = a.shape[1] // columns
    for col in range(columns):
        block = a[:, col * per : (col + 1) * per].astype(np.float64)
        for i in range(per):
            lo, hi = max(0, i - n // 2), min(per - 1, i + n // 2)
            s = (block[:, lo : hi + 1] ** 2).sum(axis=1)
            out[:, col * per + i] = block[:, i] / (k + alpha * s) ** beta
    return out


def _activations(x: torch.Tensor) -> torch.Tensor:
    """ReLU outputs of the size conv1 produces from mean-subtracted 0-255 pixels (tens to hundreds)."""
    return (x * 100.0).relu()


def test_layer_outputs_for_224_are_the_papers():
    model = AlexNet().eval()
    shapes = {}
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 224, 224) * 60)
    assert shapes == {
        "conv1": (96, 55, 55), "conv2": (256, 27, 27), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
        "conv5": (256, 13, 13), "fc6": (4096,), "fc7": (4096,), "fc8": (1000,),
    }  # fmt: skip
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    assert model.fc6.in_features == 6 * 6 * 256


def test_parameter_count_is_the_papers():
    model = AlexNet()
    assert sum(p.numel() for p in model.parameters()) == 60_965_224
    assert [model.conv2.groups, model.conv3.groups, model.conv4.groups, model.conv5.groups] == [2, 1, 2, 2]
    assert sum(p.numel() for p in AlexNet(10).parameters()) == 60_965_224 - 990 * 4097


def test_conv1_pads_three_zero_pixels_bottom_right_only():
    """Output (i, j) of conv1 reads input rows 4i..4i+10: the last row's window reaches 3 rows past 224."""
    model = AlexNet().eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        padded = torch.nn.functional.pad(x, (0, 3, 0, 3))
        expected = torch.nn.functional.conv2d(padded, model.conv1.weight, model.conv1.bias, stride=4)
        got = model.conv1(torch.nn.functional.pad(x, (0, model.pad1, 0, model.pad1)))
    assert model.pad1 == 3
    torch.testing.assert_close(got, expected)
    # the top-left output sees no padding: it is the plain 11x11 dot product at (0, 0)
    w, b = model.conv1.weight, model.conv1.bias
    torch.testing.assert_close(got[0, :, 0, 0], (w * x[0, :, :11, :11]).sum(dim=(1, 2, 3)) + b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [MIN_INPUT_SIZE, 42, 56, 63, 64, 112])
def test_small_inputs_run_through_the_pools(size):
    model = AlexNet(10, width=0.25, fc_features=64, input_size=size)
    assert feature_size(size) >= 1
    assert model(torch.randn(2, 3, size, size) * 60).shape == (2, 10)


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="too small"):
        AlexNet(input_size=MIN_INPUT_SIZE - 1)


def test_width_keeps_both_columns_even():
    model = AlexNet(10, width=0.3, fc_features=32, input_size=56)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        assert getattr(model, name).out_channels % 2 == 0
    assert model.conv1.out_channels == 2 * round(96 * 0.3 / 2)


@pytest.mark.parametrize("columns", [1, 2])
def test_lrn_is_the_papers_formula_with_alpha_over_n(columns):
    torch.manual_seed(0)
    a = _activations(torch.randn(3, 12, 5, 4))
    got = local_response_norm(a, size=5, alpha=1e-4, beta=0.75, k=2.0, groups=columns)
    # alexkit divides alpha by n (authors' code, Caffe, PyTorch): in the paper's formula (no division) that is 1e-4 / 5
    expected = _lrn_paper(a.numpy(), n=5, alpha=1e-4 / 5, beta=0.75, k=2.0, columns=columns)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    # the normalisation matters at this scale: it is not a constant divide
    ratio = (got / a.clamp_min(1e-3))[a > 1]
    assert ratio.max() / ratio.min() > 1.2


def test_lrn_window_stays_within_its_column():
    a = _activations(torch.randn(2, 8, 3, 3))
    loud = a.clone()
    loud[:, 4:] *= 100  # column 1 only
    out, out_loud = (local_response_norm(t, groups=2) for t in (a, loud))
    torch.testing.assert_close(out_loud[:, :4], out[:, :4])
    assert not torch.allclose(out_loud[:, 4:], out[:, 4:] * 100)


@pytest.mark.parametrize("size", [5, 4, 3])
def test_lrn_equals_torch_per_column_outputs_and_gradients(size):
    torch.manual_seed(1)
    a = _activations(torch.randn(4, 16, 7, 6)).requires_grad_()
    b = a.detach().clone().requires_grad_()
    g = torch.randn(4, 16, 7, 6)
    ours = local_response_norm(a, size=size, alpha=1e-4, beta=0.75, k=2.0, groups=2)
    ref = nn.LocalResponseNorm(size, alpha=1e-4, beta=0.75, k=2.0)
    theirs = torch.cat([ref(half) for half in b.chunk(2, dim=1)], dim=1)
    (ours * g).sum().backward()
    (theirs * g).sum().backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_lrn_gradient_is_exact_in_float64(beta):
    torch.manual_seed(2)
    a = (torch.randn(2, 6, 3, 3, dtype=torch.float64) * 30).requires_grad_()
    # alpha large enough that the cross-channel term dominates the gradient
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, 5, 1e-2, beta, 2.0, 2), (a,))


def test_lrn_refuses_a_second_derivative_it_would_get_wrong():
    """The hand-written backward is first-order: a gradient of its gradient (a gradient penalty)
    raises instead of leaving out how the denominator depends on the input."""
    a = torch.randn(1, 4, 3, 3, dtype=torch.float64) * 30
    w = torch.randn(4, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    loss = local_response_norm(torch.nn.functional.conv2d(a, w), 5, 1e-2, 0.75, 2.0, 2).square().sum()
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.norm().backward()


def test_lrn_keeps_dtype_and_memory_format():
    a = _activations(torch.randn(2, 8, 5, 5)).to(memory_format=torch.channels_last)
    out = local_response_norm(a.bfloat16(), groups=2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), local_response_norm(a.bfloat16().float(), groups=2), rtol=1e-2, atol=1e-2)
    assert local_response_norm(a, groups=2).is_contiguous(memory_format=torch.channels_last)


def test_paper_init():
    torch.manual_seed(0)
    model = AlexNet()
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        layer = getattr(model, name)
        w = layer.weight.detach()
        assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.01) < 0.0005, name
        bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.equal(layer.bias.detach(), torch.full_like(layer.bias, bias)), name


def test_sturdy_init_is_the_papers_gain_at_any_width():
    torch.manual_seed(0)
    narrow = AlexNet(10, width=0.25, fc_features=512, input_size=56, init="sturdy")
    assert narrow.conv3.bias.eq(0.0).all() and narrow.conv4.bias.eq(0.1).all() and narrow.fc7.bias.eq(0.1).all()
    # conv3 of the narrow net reads 64 channels x 3 x 3 instead of 256 x 3 x 3: std 0.01 * sqrt(4)
    assert abs(narrow.conv3.weight.std().item() - 0.02) < 0.001
    assert abs(narrow.fc7.weight.std().item() - 0.01 * (4096 / 512) ** 0.5) < 0.001
    full = AlexNet(init="sturdy")  # full width: the paper's N(0, 0.01) everywhere, biases 0.1
    assert all(abs(getattr(full, n).weight.std().item() - 0.01) < 0.0005 for n in ("conv1", "conv3", "fc6"))


def test_sturdy_init_keeps_the_signal_alive():
    """Through the narrow demo net, the paper's init flattens the logits; the sturdy one does not."""
    torch.manual_seed(0)
    x = torch.randn(16, 3, 56, 56) * 60  # mean-subtracted 0-255 pixels
    spreads = {}
    for init in ("paper", "sturdy"):
        model = AlexNet(10, width=0.25, fc_features=512, input_size=56, dropout=0.0, init=init)
        with torch.no_grad():
            logits = model(x)
        spreads[init] = (logits - logits.mean(0)).std().item()  # how much the logits depend on the image
    assert spreads["sturdy"] > 100 * spreads["paper"]


def test_dropout_follows_the_relus_of_fc6_and_fc7_in_training_only():
    torch.manual_seed(0)
    model = AlexNet(4, width=0.25, fc_features=512, input_size=56, init="sturdy")
    seen = {}
    for name in ("fc6", "fc7", "fc8"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: (i[0], o)}))
    x = torch.randn(8, 3, 56, 56) * 60
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            model(x)
        for before, after in (("fc6", "fc7"), ("fc7", "fc8")):
            kept = F.relu(seen[before][1])  # (8, 512)
            got = seen[after][0]  # the next layer's input
            if not training:
                assert torch.equal(got, kept)
                continue
            on = kept > 0
            dropped = (got[on] == 0).float().mean().item()
            assert 0.4 < dropped < 0.6, dropped  # p = 0.5 over thousands of units
            torch.testing.assert_close(got[on & (got != 0)], 2 * kept[on & (got != 0)])  # inverted dropout: x2
            assert (got[~on] == 0).all()


def test_build_from_checkpoint_round_trip():
    model = AlexNet(7, width=0.25, fc_features=32, input_size=56, init="sturdy")
    ckpt = {"model": model.state_dict(), "model_args": model.args}
    rebuilt = build_from_checkpoint(ckpt).eval()
    x = torch.randn(2, 3, 56, 56) * 60
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model.eval()(x))


def test_forward_is_the_papers_layers_column_by_column():
    """The whole forward pass redone by hand, each column on its own: conv1 padded at the bottom and
    right, LRN after conv1 and conv2 only and within each column, conv3 reading both columns,
    conv4 and conv5 each column's own, a pool after LRN1, LRN2 and conv5; then fc6-fc8."""
    torch.manual_seed(0)
    model = AlexNet(10, width=0.25, fc_features=16, input_size=56, init="sturdy").eval()
    with torch.no_grad():
        model.conv1.weight *= 20  # activations in the hundreds, where LRN changes them visibly
    lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)

    def columns(x, conv, lrn_after=False, cross=False):  # each column: conv (of both columns' input if cross)
        outs = []
        for w, b, part in zip(conv.weight.chunk(2), conv.bias.chunk(2), [x, x] if cross else x.chunk(2, dim=1)):
            y = F.relu(F.conv2d(part, w, b, stride=conv.stride, padding=conv.padding))
            outs.append(lrn(y) if lrn_after else y)
        return torch.cat(outs, dim=1)

    pool = lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True)  # noqa: E731
    x = torch.randn(4, 3, 56, 56) * 60
    with torch.no_grad():
        h = pool(columns(F.pad(x, (0, model.pad1, 0, model.pad1)), model.conv1, lrn_after=True, cross=True))
        h = pool(columns(h, model.conv2, lrn_after=True))
        h = columns(h, model.conv3, cross=True)
        h = pool(columns(columns(h, model.conv4), model.conv5))
        h = F.relu(model.fc7(F.relu(model.fc6(h.flatten(1)))))
        expected = model.fc8(h)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert model.pad1 > 0 and (expected - model.fc8.bias).abs().max() > 1e-3  # padding and signal both there
