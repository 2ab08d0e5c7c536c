"""The new optimizer families through the compiler: which optimizer trains which tensor, the groups it gets, and
a compiled (folded) model training exactly as the same model with its multipliers written out."""

import copy

import pytest
import torch
from torch.func import functional_call

from mupdsl.compile import CompileError, compile_model
from mupdsl.compile.plan import Carried
from mupdsl.models.mlp import example_batch
from mupdsl.optim import Combined, Lion, SignSGD

MLP = "mupdsl.models.mlp"
PRESET = {"sgd": "mup", "adam": "mup", "adamw": "mup", "signsgd": "mup", "lion": "mup", "adafactor": "mup_adafactor",
          "muon": "mup_muon"}


def _spec(tmp_path, optimizer, extra=""):
    path = tmp_path / f"{optimizer}.param"
    path.write_text(f"extends {PRESET[optimizer]}\nset wd0 = 0.01\nset eta0 = 0.01\n"
                    f"hidden {{ mult = fan_in_mult }}\n{extra}\n")   # 4 at width 256: powers of two fold exactly
    return str(path)


@pytest.mark.parametrize("optimizer", sorted(PRESET))
def test_folded_model_trains_as_the_model_with_explicit_multipliers(tmp_path, optimizer):
    compiled = compile_model(_spec(tmp_path, optimizer), MLP, width=256, base_width=64, optimizer=optimizer)
    folds = {t.name: t.carried.fold for t in compiled.plan.tensors}
    assert folds["hidden.0.weight"] == 4 and folds["readout.weight"] == 0.25   # hidden mult, µP's 1/fan_in_mult
    # the reference: w = W / f trained with the plan's own (unfolded) settings, run as f · w
    reference = copy.deepcopy(compiled.model)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.div_(folds[name])
    plain = compiled.plan.model_copy(update={"tensors": [t.model_copy(update={"carried": Carried(
        fold=1.0, init_std=t.init_std, init_scale=t.init_scale, lr=t.lr, wd=t.wd, eps=t.eps, sources=[])})
        for t in compiled.plan.tensors]})
    from mupdsl.compile.initialize import optimizer_for   # noqa: PLC0415

    opt_ref = optimizer_for(reference, plain)
    opt = compiled.optimizer()
    x, y = example_batch(16)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(compiled.model(x), y).backward()
        opt.step()
        opt_ref.zero_grad()
        effective = {n: folds[n] * p for n, p in reference.named_parameters()}
        torch.nn.functional.cross_entropy(functional_call(reference, effective, (x,)), y).backward()
        opt_ref.step()
    for name, p in compiled.model.named_parameters():
        q = folds[name] * reference.get_parameter(name).detach()
        scale = p.detach().abs().max().item()
        assert torch.allclose(p.detach(), q, rtol=1e-4, atol=1e-5 * scale), (name, (p - q).abs().max().item())


def test_muon_owns_the_hidden_matrices_and_adamw_the_rest():
    compiled = compile_model("mup_muon", MLP, width=128, base_width=64, optimizer="muon")
    by = {t.name: t.optimizer for t in compiled.plan.tensors}
    assert by["hidden.0.weight"] == by["hidden.1.weight"] == "muon"
    assert {by["input.weight"], by["readout.weight"], by["hidden.0.bias"]} == {"adamw"}
    hidden = compiled.plan.tensor("hidden.0.weight")
    assert hidden.eps is None and hidden.lr == pytest.approx(0.1 * 4)   # eta0 · muon0 · (128/128)^(1/2)
    opt = compiled.optimizer()
    assert isinstance(opt, Combined) and set(opt.parts) == {"muon", "adamw"}
    if hasattr(torch.optim, "Muon"):
        assert isinstance(opt.parts["muon"], torch.optim.Muon)
    assert isinstance(opt.parts["adamw"], torch.optim.AdamW)


def test_muon_section_chooses_owners_and_fallback(tmp_path):
    path = tmp_path / "m.param"
    path.write_text('extends mup_muon\nmuon {\n  fallback = adam\n  "hidden.1.weight" { muon = false }\n'
                    '  output { muon = true }\n}\n')
    compiled = compile_model(str(path), MLP, width=128, base_width=64, optimizer="muon")
    by = {t.name: t.optimizer for t in compiled.plan.tensors}
    assert by["hidden.0.weight"] == by["readout.weight"] == "muon"
    assert by["hidden.1.weight"] == by["input.weight"] == "adam"
    assert compiled.plan.tensor("readout.weight").lr == pytest.approx(0.1 * 4 * (10 / 128) ** 0.5)
    assert set(compiled.optimizer().parts) == {"muon", "adam"}


def test_a_vector_given_to_muon_is_an_error_naming_it(tmp_path):
    path = tmp_path / "m.param"
    path.write_text("extends mup_muon\nmuon {\n  bias { muon = true }\n}\n")
    with pytest.raises(CompileError, match=r"input\.bias .* Muon orthogonalises matrices") as err:
        compile_model(str(path), MLP, width=128, base_width=64, optimizer="muon")
    assert "m.param:3" in err.value.hint


def test_sign_and_lion_plans_build_mupdsl_classes_and_take_no_eps():
    for optimizer, cls in (("signsgd", SignSGD), ("lion", Lion)):
        compiled = compile_model("mup", MLP, width=128, base_width=64, optimizer=optimizer)
        assert all(t.eps is None for t in compiled.plan.tensors)
        opt = compiled.optimizer()
        assert type(opt) is cls and all("eps" not in g for g in opt.param_groups)


def test_a_class_of_another_family_is_refused_for_a_folded_plan():
    compiled = compile_model("mup", MLP, width=128, base_width=64, optimizer="lion")
    with pytest.raises(CompileError, match="sgd-like"):
        compiled.optimizer(torch.optim.SGD)
    assert type(compiled.optimizer(SignSGD)) is SignSGD   # same family, decay decoupled as Lion's


def test_adafactor_compiles_and_trains_on_a_torch_without_it(monkeypatch):
    """The tool brings its own Adafactor, so an older torch runs the section as a newer one does."""
    monkeypatch.delattr(torch.optim, "Adafactor", raising=False)
    compiled = compile_model("mup_adafactor", MLP, width=128, base_width=64, optimizer="adafactor")
    opt = compiled.optimizer()
    before = compiled.model.get_parameter("hidden.0.weight").detach().clone()
    compiled(torch.randn(4, 40)).square().mean().backward()
    opt.step()
    assert not torch.equal(before, compiled.model.get_parameter("hidden.0.weight"))
