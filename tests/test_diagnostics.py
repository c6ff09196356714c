"""Gradient-flow diagnostics: probes against autograd and finite differences, decay, the recorder, tasks, the command."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.cli.main import build_parser, main
from rnnkit.data import StreamBatches, TensorBatches
from rnnkit.training import Callback, Trainer, TrainerConfig
from rnnkit.data.synthetic import adding_problem, copy_task
from rnnkit.models.long_range import AddingModel, CopyModel
from rnnkit.training.diagnostics import GradientFlowRecorder, decay_ratio, measure_gradient_flow, probe_hidden_states
from tests.support.models import TinyLM, periodic_tokens

LAYERS = [rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _weighted_loss(output, final, generator):
    """A loss that reads every output step and the final state, with a random weight per element."""
    parts = [output, *(final if isinstance(final, tuple) else (final,))]
    return sum((torch.randn(p.shape, generator=generator, dtype=p.dtype) * p).sum() for p in parts)


# -- probes -------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_class", LAYERS, ids=lambda c: c.__name__)
def test_probed_forward_equals_the_reference_engine_bitwise(layer_class):
    layer = layer_class(3, 5, num_layers=2, bidirectional=True, batch_first=True, engine="reference")
    x, lengths = torch.randn(4, 7, 3), [7, 2, 5, 1]
    expected_out, expected_final = layer(x, lengths=lengths)
    with probe_hidden_states(layer) as probes:
        out, final = layer(x, lengths=lengths)
    assert torch.equal(out, expected_out)
    for got, want in zip(*(f if isinstance(f, tuple) else (f,) for f in (final, expected_final))):
        assert torch.equal(got, want)
    assert sorted(probes.split(probes.tensors)) == ["l0", "l0_reverse", "l1", "l1_reverse"]
    assert layer.run_direction is rnnkit.engine.ENGINES["reference"]  # restored on exit

    fused = layer_class(3, 5, num_layers=2, bidirectional=True, batch_first=True)  # "auto"
    fused.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fused(x, lengths=lengths)[0], out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer_class", LAYERS, ids=lambda c: c.__name__)
def test_probe_gradients_equal_autograd_on_retained_states(layer_class):
    """A hand-written loop keeps every h_t; autograd's gradient w.r.t. each is the total derivative."""
    layer = layer_class(3, 4, num_layers=2, dtype=torch.float64)
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    with probe_hidden_states(layer) as probes:
        out, final = layer(x)
        loss = _weighted_loss(out, final, torch.Generator().manual_seed(5))
    grads = probes.gradients(loss)

    inputs, retained, finals = x, [], []
    for k in range(layer.num_layers):
        state = tuple(torch.zeros(2, size, dtype=torch.float64) for size in layer.spec.state_sizes(4, 4))
        hs = []
        for x_t in inputs.unbind(0):
            h, state = layer.spec.step(x_t, state, layer.cell_weights(k, 0))
            hs.append(h)
        retained.append(hs)
        finals.append(state)
        inputs = torch.stack(hs)
    final_ref = tuple(torch.stack(parts) for parts in zip(*finals))
    loss_ref = _weighted_loss(inputs, final_ref if len(final_ref) > 1 else final_ref[0], torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss, loss_ref, atol=1e-12, rtol=1e-12)
    for k, hs in enumerate(retained):
        expected = torch.stack(torch.autograd.grad(loss_ref, hs, retain_graph=True))
        torch.testing.assert_close(grads[f"l{k}"], expected, atol=1e-12, rtol=1e-10)


def test_probe_gradient_matches_central_differences():
    """Perturb h_t along a random direction v: (L(h_t + εv) - L(h_t - εv)) / 2ε = <∂L/∂h_t, v>."""
    torch.manual_seed(3)
    layer = rnnkit.RNN(2, 5, dtype=torch.float64)
    x = torch.randn(12, 3, 2, dtype=torch.float64)
    weights = torch.randn(12, 3, 5, dtype=torch.float64)
    with probe_hidden_states(layer) as probes:
        loss = (weights * layer(x)[0]).sum()
    grads = probes.gradients(loss)["l0"]

    def loss_with_perturbation(step: int, delta: torch.Tensor) -> float:
        state, outputs = (torch.zeros(3, 5, dtype=torch.float64),), []
        for t, x_t in enumerate(x.unbind(0)):
            h, state = layer.spec.step(x_t, state, layer.cell_weights(0, 0))
            if t == step:
                h = h + delta
                state = (h,)
            outputs.append(h)
        return float((weights * torch.stack(outputs)).sum())

    eps = 1e-6
    with torch.no_grad():
        for step in (0, 5, 11):
            v = torch.randn(3, 5, dtype=torch.float64)
            numeric = (loss_with_perturbation(step, eps * v) - loss_with_perturbation(step, -eps * v)) / (2 * eps)
            assert numeric == pytest.approx(float((grads[step] * v).sum()), rel=1e-6, abs=1e-9)


def test_padding_steps_get_zero_gradient():
    layer = rnnkit.GRU(2, 3, batch_first=True)
    with probe_hidden_states(layer) as probes:
        out, h = layer(torch.randn(2, 6, 2), lengths=[6, 3])
        loss = out.sum() + h.sum()
    grads = probes.gradients(loss)["l0"]  # (L, N, H)
    assert torch.all(grads[3:, 1] == 0) and torch.all(grads[:3, 1].abs().sum(-1) > 0)


def test_states_the_loss_never_reads_get_zero_gradient():
    layer = rnnkit.LSTM(2, 3, bidirectional=True)
    with probe_hidden_states(layer) as probes:
        out, _ = layer(torch.randn(5, 2, 2))
        loss = out[-1, :, :3].sum()  # the forward direction's last step only
    grads = probes.gradients(loss)
    assert torch.all(grads["l0_reverse"] == 0) and torch.all(grads["l0"][-1] == 1)


def test_probe_errors():
    with pytest.raises(ValueError, match="layer: expected an rnnkit RecurrentLayer .*, got Linear"), probe_hidden_states(nn.Linear(2, 2)):
        pass
    layer = rnnkit.LSTM(2, 3)
    message = r"probing: expected gradient recording enabled .*, got grad mode off"
    with pytest.raises(ValueError, match=message), probe_hidden_states(layer), torch.no_grad():
        layer(torch.randn(4, 1, 2))
    assert layer.run_direction is rnnkit.engine.resolve("auto")  # restored after the error


# -- vanishing and exploding at init ---------------------------------------------------------


def test_elman_gradient_vanishes_while_open_gates_carry_it():
    """T = 60 steps from the loss: tanh RNN at torch.nn's init vs LSTM/GRU with the carry gate biased open."""
    x, y = adding_problem(128, 60, seed=11)
    ratios = {}
    for cell, bias in (("rnn", None), ("lstm", 5.0), ("gru", 5.0)):
        torch.manual_seed(7)
        flow = measure_gradient_flow(AddingModel(cell, 16, carry_bias=bias), x, y)
        ratios[cell] = decay_ratio(flow.hidden["rnn.l0"])
    assert ratios["rnn"] < 1e-8, ratios  # measured ~1e-13: a factor ~0.6 per step
    assert ratios["lstm"] > 1e-2 and ratios["gru"] > 1e-2, ratios  # measured ~0.5 and ~0.3


def test_scaled_up_recurrent_weights_make_the_gradient_explode():
    x, y = adding_problem(128, 60, seed=11)
    torch.manual_seed(7)
    model = AddingModel("rnn", 16)
    with torch.no_grad():
        w = model.rnn.weight_hh_l0
        w.mul_(3.0 / torch.linalg.eigvals(w).abs().max())
    assert decay_ratio(measure_gradient_flow(model, x, y).hidden["rnn.l0"]) > 1e3


def test_measured_parameter_norms_equal_backward_and_leave_no_grad():
    torch.manual_seed(2)
    model = TinyLM(hidden=6)  # embed -> 2-layer LSTM -> head
    tokens = periodic_tokens(40).reshape(10, 4)
    flow = measure_gradient_flow(model, tokens[:-1], tokens[1:])
    assert all(p.grad is None for p in model.parameters())
    assert sorted(flow.hidden) == ["rnn.l0", "rnn.l1"] and flow.hidden["rnn.l0"].shape == (9,)
    model.loss(model(tokens[:-1])[0], tokens[1:]).backward()
    expected = {
        "embed": model.embed.weight.grad.norm(),
        "head": torch.cat([model.head.weight.grad.flatten(), model.head.bias.grad]).norm(),
        **{f"rnn.l{k}": torch.cat([g.grad.flatten() for g in model.rnn.all_weights[k]]).norm() for k in range(2)},
    }
    assert flow.parameters == pytest.approx({k: float(v) for k, v in expected.items()}, rel=1e-5)


# -- the recorder ---------------------------------------------------------------------------------


class NoisyAddingModel(AddingModel):
    """Draws from the global RNG on every forward, in eval mode too: a recorder that moved the RNG would show."""

    def forward(self, inputs, state=None):
        return super().forward(inputs + 0.01 * torch.randn_like(inputs), state)


def _losses(make_model, data, config, recorder=None):
    torch.manual_seed(123)
    model = make_model()
    losses = []

    class Losses(Callback):
        def on_step_end(self, trainer, record):
            losses.append(record["loss"])

    callbacks = [Losses()] + ([recorder] if recorder else [])
    Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-2), config, callbacks=callbacks).fit(data)
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("case", ["dropout_tbptt", "noisy_forward"])
def test_recorder_does_not_change_training_and_writes_long_csv(case, tmp_path):
    if case == "dropout_tbptt":
        tokens = periodic_tokens(400)
        make_model, data = (lambda: TinyLM(hidden=8, dropout=0.3)), StreamBatches(tokens, 4)
        config = TrainerConfig(max_epochs=2, tbptt_k1=11, progress=False)
        probe = (tokens[:20].reshape(10, 2), tokens[1:21].reshape(10, 2))
    else:
        x, y = adding_problem(96, 13, seed=1)
        make_model, data = (lambda: NoisyAddingModel("gru", 8)), TensorBatches(x, y, 16)
        config = TrainerConfig(max_epochs=2, progress=False)
        probe = (x[:8], y[:8])
    plain_losses, plain_params = _losses(make_model, data, config)
    recorder = GradientFlowRecorder(probe, every=3, csv_path=tmp_path / "flow.csv")
    losses, params = _losses(make_model, data, config, recorder)

    assert losses == plain_losses and len(losses) >= 10  # bitwise
    assert all(torch.equal(a, b) for a, b in zip(params, plain_params))
    steps = [step for step, _ in recorder.history]
    assert steps == [0, *range(3, len(losses) + 1, 3)]
    with (tmp_path / "flow.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "quantity", "name", "t", "value"]
    assert sorted({int(r["step"]) for r in rows}) == steps
    hidden = [r for r in rows if r["quantity"] == "hidden_grad_norm" and r["step"] == "0"]
    assert {r["name"] for r in hidden} == set(recorder.history[0][1].hidden)
    first = recorder.history[0][1]
    name = min(first.hidden)
    assert [float(r["value"]) for r in hidden if r["name"] == name] == first.hidden[name].tolist()


@pytest.mark.parametrize("training", [True, False], ids=["train_mode", "eval_mode"])
def test_recorder_measurement_leaves_no_grad_and_restores_the_mode(training):
    # The trainer zeroes gradients before each step, so the test above cannot see leftovers.
    x, y = adding_problem(8, 5)
    model = AddingModel("lstm", 4).train(training)
    model.head.train(not training)  # mixed modes are restored module by module
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), TrainerConfig(progress=False))
    flow = GradientFlowRecorder((x, y)).record(trainer, 0)
    assert all(p.grad is None for p in model.parameters())
    assert (model.training, model.rnn.training, model.head.training) == (training, training, not training)
    assert flow.hidden["rnn.l0"].shape == (5,) and sorted(flow.parameters) == ["head", "rnn.l0"]


def test_recorder_argument_errors():
    with pytest.raises(ValueError, match="probe_batch: expected an \\(inputs, targets\\) pair, got Tensor"):
        GradientFlowRecorder(torch.zeros(3))
    with pytest.raises(ValueError, match="every: expected a positive int, got 0"):
        GradientFlowRecorder((torch.zeros(1), torch.zeros(1)), every=0)


# -- tasks ---------------------------------------------------------------------------------------


def test_adding_problem_invariants():
    x, y = adding_problem(20_000, 31, seed=4)
    assert x.shape == (20_000, 31, 2) and y.shape == (20_000,) and x.dtype == y.dtype == torch.float32
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(markers.unique().tolist()) == {0.0, 1.0}
    assert (markers[:, :15].sum(1) == 1).all() and (markers[:, 15:].sum(1) == 1).all()  # one per half
    torch.testing.assert_close(y, (values * markers).sum(1))
    assert ((y - 1) ** 2).mean().item() == pytest.approx(1 / 6, abs=0.01)  # the trivial baseline
    assert torch.equal(adding_problem(5, 31, seed=4)[0], adding_problem(5, 31, seed=4)[0])
    assert not torch.equal(adding_problem(5, 31, seed=4)[0], adding_problem(5, 31, seed=5)[0])
    with pytest.raises(ValueError, match=r"seq_len: expected an int >= 2 \(one marker in each half\), got 1"):
        adding_problem(3, 1)


def test_copy_task_invariants():
    x, y = copy_task(50, 17, num_symbols=5, copy_length=3, seed=2)
    assert x.shape == y.shape == (50, 17 + 6) and x.dtype == torch.long
    assert ((x[:, :3] >= 1) & (x[:, :3] <= 5)).all()
    assert (x[:, 3:19] == 0).all() and (x[:, 19] == 6).all() and (x[:, 20:] == 0).all()
    assert (y[:, :20] == 0).all() and torch.equal(y[:, 20:], x[:, :3])
    model = CopyModel("gru", 8, num_symbols=5, copy_length=3)
    logits, _ = model(x)
    assert logits.shape == (50, 23, 7) and math.isfinite(model.loss(logits, y).item())
    assert 0 <= model.metrics(logits, y)["accuracy"] <= 1


def test_adding_model_follows_the_trainer_contract_and_biases_its_carry_gate():
    x, y = adding_problem(4, 6)
    model = AddingModel("lstm", 5, carry_bias=2.0)
    prediction, _ = model(x)
    assert prediction.shape == (4,) and model.loss(prediction, y).dim() == 0
    assert torch.all(model.rnn.bias_ih_l0[5:10] == 2.0) and torch.all(model.rnn.bias_hh_l0[5:10] == 0)
    assert AddingModel("gru", 5, carry_bias=3.0).rnn.bias_ih_l0[5:10].eq(3.0).all()
    with pytest.raises(ValueError, match="cell: expected one of \\['gru', 'lstm', 'rnn'\\], got 'elman'"):
        AddingModel("elman")


# -- the command ----------------------------------------------------------------------------------


def _read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_diagnose_quick_writes_csvs_pngs_and_a_summary(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert main(["diagnose", "--quick", "--out", str(tmp_path / "a"), "--steps", "12", "--set", "explode_steps=8"]) == 0
    assert torch.get_num_threads() == threads
    out = capsys.readouterr().out
    assert "ratio = ||dL/dh_1|| / ||dL/dh_T||" in out and "predict 1.0" in out and "clip_grad_norm=1" in out
    run = tmp_path / "a"
    for name in ("gradient_flow.png", "training_curves.png", "exploding.png"):
        assert (run / name).read_bytes()[:8] == PNG_MAGIC, name
    summary = _read_csv(run / "summary.csv")
    columns = ["model", "ratio_init_torch_default", "ratio_init", "ratio_trained", "val_mse", "val_within_0.04", "train_seconds"]
    assert list(summary[0]) == columns
    assert [r["model"] for r in summary] == ["rnn", "lstm", "gru", "predict_1.0"]
    assert list(_read_csv(run / "exploding.csv")[0]) == ["run", "spectral_radius", "clip_grad_norm", "step", "loss", "grad_norm"]
    for cell in ("rnn", "lstm", "gru"):
        flow = _read_csv(run / f"gradient_flow_{cell}.csv")
        assert {r["step"] for r in flow} == {"0", "10", "12"}  # every 10 steps, and the last
        assert len([r for r in flow if r["quantity"] == "hidden_grad_norm" and r["step"] == "12"]) == 20  # T
        assert [r["split"] for r in _read_csv(run / f"training_{cell}.csv")].count("train") == 12

    # Same seed, same numbers (timings aside).
    main(["diagnose", "--quick", "--out", str(tmp_path / "b"), "--steps", "12", "--set", "explode_steps=8"])
    same = _read_csv(tmp_path / "b" / "summary.csv")
    def untimed(rows):
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]

    assert untimed(same) == untimed(summary)
    assert (tmp_path / "b" / "gradient_flow_lstm.csv").read_text() == (run / "gradient_flow_lstm.csv").read_text()


def test_diagnose_help_and_bad_keys(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["diagnose", "--help"])
    assert exit_info.value.code == 0 and "--quick" in capsys.readouterr().out
    # one `error:` line and exit 2, as every other command's usage errors
    assert main(["diagnose", "--quick", "--set", "lrr=0.1"]) == 2
    assert capsys.readouterr().err.startswith("rnnkit diagnose: error: lrr: unknown key for DiagnoseConfig")
    assert main(["diagnose", "--quick", "--steps", "-3"]) == 2
    assert capsys.readouterr().err == "rnnkit diagnose: error: steps: expected a positive int, got -3\n"


@pytest.mark.parametrize("experiment", [[], ["order"]], ids=["gradients", "order"])
def test_diagnose_refuses_to_write_into_a_training_run(tmp_path, capsys, experiment):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert main(["diagnose", *experiment, "--quick", "--out", str(run)]) == 2
    assert "error: --out " in (err := capsys.readouterr().err) and "expected a folder for the diagnosis, got one that holds a training run" in err
    (tmp_path / "file").write_text("x")
    assert main(["diagnose", *experiment, "--quick", "--out", str(tmp_path / "file")]) == 2
    assert "expected a folder for the diagnosis, got a file" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.json"] and (tmp_path / "file").read_text() == "x"
