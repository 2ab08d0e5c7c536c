"""The new optimizer families through the compiler: which optimizer trains which tensor, the groups it gets, and
a compiled (folded) model training exactly as the same model with its multipliers written out."""

import copy

import pytest
import torch
from torch.func import functional_call

from mupdsl.compile import CompileError, compile_model
from mupdsl.compile.plan import Carried
from mupdsl.models.mlp import example_batch
from mupdsl.optim import Combined, Lion, Muon, SignSGD

MLP = "mupdsl.models.mlp"
PRESET = {"sgd": "mup", "adam": "mup", "adamw": "mup", "signsgd": "mup", "lion": "mup", "adafactor": "mup_adafactor",
          "adafactor_unscaled": "mup", "muon": "mup_muon"}


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
    compiled = compile_model("mup", MLP, width=128, base_width=64, optimizer="adamw")
    with pytest.raises(CompileError, match="sgd-like"):
        compiled.optimizer(torch.optim.SGD)
    assert type(compiled.optimizer(torch.optim.AdamW)) is torch.optim.AdamW


@pytest.mark.parametrize("optimizer,cls", [("signsgd", Lion), ("lion", SignSGD), ("signsgd", torch.optim.AdamW),
                                           ("lion", torch.optim.Adam), ("adamw", Lion), ("adam", SignSGD)])
def test_a_sign_based_plan_or_class_goes_only_with_its_own_optimizer(optimizer, cls):
    """They fold alike, but a signsgd plan holds the signsgd section's rates and no ε: Lion would train it at
    SignSGD's rates, AdamW with its default ε on every tensor (neither scaled with width nor folded)."""
    compiled = compile_model("mup", MLP, width=128, base_width=64, optimizer=optimizer)
    with pytest.raises(CompileError, match=rf"{cls.__name__}: the plan was compiled for {optimizer}"):
        compiled.optimizer(cls)
    own = {"signsgd": SignSGD, "lion": Lion}.get(optimizer)
    if own is not None:
        assert type(compiled.optimizer(own)) is own


def test_adafactor_compiles_and_trains_on_a_torch_without_it(monkeypatch):
    """The tool brings its own Adafactor, so an older torch runs the section as a newer one does."""
    monkeypatch.delattr(torch.optim, "Adafactor", raising=False)
    compiled = compile_model("mup_adafactor", MLP, width=128, base_width=64, optimizer="adafactor")
    opt = compiled.optimizer()
    before = compiled.model.get_parameter("hidden.0.weight").detach().clone()
    compiled(torch.randn(4, 40)).square().mean().backward()
    opt.step()
    assert not torch.equal(before, compiled.model.get_parameter("hidden.0.weight"))


def test_adafactor_unscaled_reads_adams_rules_and_runs_without_parameter_scaling():
    """Without parameter scaling Adafactor's step is lr times a scale-free update, so `mup`'s Adam rules are its
    rules (hidden lr ∝ 1/fan_in_mult, not mup_adafactor's fan_in_mult^(−½)) and every group says
    scale_parameter=False."""
    unscaled = compile_model("mup", MLP, width=256, base_width=64, optimizer="adafactor_unscaled")
    adam = compile_model("mup", MLP, width=256, base_width=64, optimizer="adam")
    assert [(t.lr, t.eps) for t in unscaled.plan.tensors] == [(t.lr, t.eps) for t in adam.plan.tensors]
    assert unscaled.plan.tensor("hidden.0.weight").lr == pytest.approx(unscaled.plan.tensor("input.weight").lr / 4)
    opt = unscaled.optimizer()
    assert all(g["scale_parameter"] is False and g["eps"][1] == 1e-3 for g in opt.param_groups)
    assert all(g["scale_parameter"] is True for g in compile_model(
        "mup_adafactor", MLP, width=256, base_width=64, optimizer="adafactor").optimizer().param_groups)


@pytest.mark.parametrize("spec,optimizer", [("mup_adafactor", "adafactor"), ("mup", "adafactor_unscaled")])
def test_huggingface_adafactor_trains_a_plan_as_the_tools_own(spec, optimizer):
    """transformers' Adafactor (relative_step=False) given the plan's groups — ε₁ squared, scale_parameter from the
    plan — trains the compiled model as mupdsl.optim.Adafactor does; relative_step left on is refused."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.optimization.Adafactor
    compiled = compile_model(spec, MLP, width=128, base_width=64, optimizer=optimizer, overrides={"eta0": 0.01})
    start = copy.deepcopy(compiled.model.state_dict())
    x, y = example_batch(16)

    def train(opt):
        compiled.model.load_state_dict(start)
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(compiled.model(x), y).backward()
            opt.step()
        return {n: p.detach().clone() for n, p in compiled.model.named_parameters()}

    ours = train(compiled.optimizer())
    theirs = train(compiled.optimizer(hf, relative_step=False))
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-6)
    with pytest.raises(CompileError, match=r"relative_step=True"):
        compiled.optimizer(hf)


def test_torch_adafactor_is_refused_for_a_plan_without_parameter_scaling():
    compiled = compile_model("mup", MLP, width=128, base_width=64, optimizer="adafactor_unscaled")
    if hasattr(torch.optim, "Adafactor"):
        with pytest.raises(CompileError, match=r"always scales its step by RMS\(p\)"):
            compiled.optimizer(torch.optim.Adafactor)


@pytest.mark.parametrize("kwargs,match", [({"lr": 0.1}, r"lr=0\.1.*sets lr for every tensor"),
                                          ({"weight_decay": 0.1}, r"sets weight_decay for every tensor"),
                                          ({"eps": 1e-6}, r"sets eps for every tensor")])
def test_a_keyword_the_plan_sets_per_tensor_is_refused_not_ignored(kwargs, match):
    """A group's value overrides the constructor's default, so lr=…, weight_decay=… or eps=… would be ignored."""
    compiled = compile_model("mup", MLP, width=128, base_width=64, optimizer="adam")
    with pytest.raises(CompileError, match=match):
        compiled.optimizer(**kwargs)
    assert compiled.optimizer(betas=(0.9, 0.95)).param_groups[0]["betas"] == (0.9, 0.95)


def test_muon_keywords_go_to_muon_and_a_second_shape_factor_is_refused():
    compiled = compile_model("mup_muon", MLP, width=128, base_width=64, optimizer="muon")
    opt = compiled.optimizer(ns_steps=3, fallback_kwargs={"betas": (0.8, 0.9)})
    assert all(g["ns_steps"] == 3 for g in opt.parts["muon"].param_groups)
    assert all(g["betas"] == (0.8, 0.9) for g in opt.parts["adamw"].param_groups)
    if hasattr(torch.optim, "Muon"):
        assert isinstance(compiled.optimizer(adjust_lr_fn="original").parts["muon"], torch.optim.Muon)
    with pytest.raises(CompileError, match=r"adjust_lr_fn='match_rms_adamw'"):
        compiled.optimizer(adjust_lr_fn="match_rms_adamw")
    with pytest.raises(CompileError, match=r"fallback_kwargs is for a Muon plan"):
        compile_model("mup", MLP, width=128, base_width=64, optimizer="adam").optimizer(fallback_kwargs={})


def test_muon_falls_back_to_adafactor_without_parameter_scaling(tmp_path):
    path = tmp_path / "m.param"
    path.write_text("extends mup_muon\nmuon {\n  fallback = adafactor_unscaled\n}\n")
    compiled = compile_model(str(path), MLP, width=128, base_width=64, optimizer="muon")
    adam = compile_model("mup", MLP, width=128, base_width=64, optimizer="adam")
    assert compiled.plan.tensor("readout.weight").lr == adam.plan.tensor("readout.weight").lr   # mup's adam rules
    opt = compiled.optimizer()
    assert set(opt.parts) == {"muon", "adafactor_unscaled"}
    assert all(g["scale_parameter"] is False for g in opt.parts["adafactor_unscaled"].param_groups)


def test_a_class_of_another_family_is_refused_even_without_folded_multipliers():
    """sp_adafactor folds nothing, but its rates are Adafactor's rules and its groups carry (ε₁, ε₂): AdamW is
    refused at build time, not crashed at step time; a Muon class on a plan that is not Muon's is refused too."""
    compiled = compile_model("sp_adafactor", MLP, width=128, base_width=64, optimizer="adafactor")
    assert all(t.carried is None or t.carried.fold == 1.0 for t in compiled.plan.tensors)
    with pytest.raises(CompileError, match=r"AdamW: the plan was compiled for adafactor; its groups hold"):
        compiled.optimizer(torch.optim.AdamW)
    unscaled = compile_model("mup", MLP, width=128, base_width=64, optimizer="adafactor_unscaled")
    for cls in (torch.optim.AdamW, Lion):      # the adam family, but not Adafactor's settings
        with pytest.raises(CompileError, match=r"compiled for adafactor_unscaled; its groups hold Adafactor's"):
            unscaled.optimizer(cls)
    adam = compile_model("sp", MLP, width=128, base_width=64, optimizer="adamw")
    for cls in [Muon] + ([torch.optim.Muon] if hasattr(torch.optim, "Muon") else []):
        with pytest.raises(CompileError, match=r"compiled for adamw; Muon orthogonalises"):
            adam.optimizer(cls)


@pytest.mark.skipif(not hasattr(torch.optim, "Adafactor"), reason="torch.optim.Adafactor needs torch >= 2.5")
def test_torch_adafactor_is_warned_about_with_one_rate_too():
    compiled = compile_model("sp_adafactor", MLP, width=128, base_width=64, optimizer="adafactor")
    with pytest.warns(UserWarning, match=r"caps its relative step"):
        compiled.optimizer(torch.optim.Adafactor)


def test_muon_adjust_lr_fn_none_is_torchs_original():
    compiled = compile_model("mup_muon", MLP, width=128, base_width=64, optimizer="muon")
    assert set(compiled.optimizer(adjust_lr_fn=None).parts) == {"muon", "adamw"}
    for value in ("original", None):     # mupdsl's Muon (torch < 2.9) has no shape factor to adjust
        assert isinstance(compiled.optimizer(Muon, adjust_lr_fn=value).parts["muon"], Muon)


def test_combined_after_load_state_dict_steps_with_the_groups_a_scheduler_changes():
    """load_state_dict gives the parts new group dictionaries; Combined's param_groups must be those, or a
    scheduler (built before or after, resumed with last_epoch) would change dictionaries nobody steps with."""
    compiled = compile_model("mup_muon", MLP, width=64, base_width=32, optimizer="muon")
    opt = compiled.optimizer()
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    for p in compiled.model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    schedule.step()
    saved = opt.state_dict()
    resumed = compiled.optimizer()
    resumed.load_state_dict(saved)
    assert all(any(g is h for part in resumed.parts.values() for h in part.param_groups)
               for g in resumed.param_groups)
    assert set(resumed.state) == set(opt.state) and len(resumed.state) == len(list(compiled.model.parameters()))
    torch.optim.lr_scheduler.LambdaLR(resumed, lambda step: 0.0, last_epoch=1)   # initial_lr came with the state
    before = {n: p.detach().clone() for n, p in compiled.model.named_parameters()}
    torch.optim.lr_scheduler.LambdaLR(resumed, lambda step: 0.0)
    assert all(g["lr"] == 0.0 for part in resumed.parts.values() for g in part.param_groups)
    for p in compiled.model.parameters():
        p.grad = torch.randn_like(p)
    resumed.step()
    assert all(torch.equal(p, before[n]) for n, p in compiled.model.named_parameters())
    with pytest.raises(ValueError, match=r"belong to no part"):
        resumed.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, 2))]})


def test_a_rule_naming_a_tied_alias_selects_the_tensor(tmp_path):
    """HF GPT-2's lm_head.weight is transformer.wte.weight: a rule written for either name selects the one tensor
    (docs/language.md writes `"lm_head.weight" { muon = false }`)."""
    pytest.importorskip("transformers")
    from pathlib import Path

    gpt2 = str(Path(__file__).resolve().parent / "zoo" / "hf_gpt2.py")
    path = tmp_path / "tied.param"
    path.write_text('extends mup_muon\nmuon {\n  "lm_head.weight" { muon = true }\n}\n')
    compiled = compile_model(str(path), gpt2, width=64, base_width=32, optimizer="muon")
    wte = compiled.plan.tensor("transformer.wte.weight")
    assert wte.tied_to == ["lm_head.weight"] and wte.optimizer == "muon"
    plain = compile_model("mup_muon", gpt2, width=64, base_width=32, optimizer="muon")
    assert plain.plan.tensor("transformer.wte.weight").optimizer == "adamw"
    assert not [w for w in compiled.plan.warnings if "matches no tensor" in w]


def test_combined_survives_deepcopy_and_pickle():
    """torch's Optimizer pickles only defaults, state and groups; a Combined keeps its parts (and their state)."""
    import pickle

    compiled = compile_model("mup_muon", MLP, width=64, base_width=32, optimizer="muon")
    opt = compiled.optimizer()
    for p in compiled.model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    for copied in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert set(copied.parts) == set(opt.parts) and len(copied.state) == len(opt.state)
        assert all(any(g is h for part in copied.parts.values() for h in part.param_groups)
                   for g in copied.param_groups)
        params = [p for g in copied.param_groups for p in g["params"]]
        for p in params:
            p.grad = torch.ones_like(p)
        copied.step()   # steps its own copies of the parameters


@pytest.mark.parametrize("optimizer", ["adam", "lion", "muon"])
def test_parameters_added_or_removed_after_compile_are_named_not_left_untrained(optimizer):
    spec = PRESET[optimizer]
    compiled = compile_model(spec, MLP, width=128, base_width=64, optimizer=optimizer)
    compiled.model.adapter = torch.nn.Linear(4, 4)            # added after compile: the plan has no rule for it
    for build in (compiled.optimizer, compiled.verify):
        with pytest.raises(CompileError, match=r"does not cover: 'adapter.weight', 'adapter.bias'"):
            build()
    compiled.model.adapter.requires_grad_(False)              # frozen: nothing to train, nothing to refuse
    compiled.optimizer().step()                                # builds, and steps without it
    del compiled.model.adapter
    compiled.model.readout.bias = None                        # removed after compile
    with pytest.raises(CompileError, match=r"names 'readout.bias', which the model no longer has"):
        compiled.optimizer()


@pytest.mark.parametrize("optimizer,kwargs,match", [
    ("lion", {"maximize": True}, r"Lion takes no maximize(?s:.*)it takes betas"),
    ("signsgd", {"nesterov": True}, r"SignSGD takes no nesterov(?s:.*)it takes momentum"),
    ("muon", {"fallback_kwargs": {"bogus": 1}}, r"AdamW takes no bogus"),
    ("muon", {"momentum": 1.0}, r"needs μ in \[0, 1\)"),          # torch's Muon would take it and never move
])
def test_a_keyword_the_class_cannot_take_is_a_clear_error(optimizer, kwargs, match):
    compiled = compile_model(PRESET[optimizer], MLP, width=128, base_width=64, optimizer=optimizer)
    with pytest.raises(CompileError, match=match):
        compiled.optimizer(**kwargs)


def test_a_subclass_of_a_sign_class_runs_its_plan_and_an_unknown_class_is_judged_by_its_family():
    class MyLion(Lion):
        pass

    class Lion8bit(torch.optim.Optimizer):      # another package's Lion: an unknown class to the tool
        def __init__(self, params, lr=1e-4, weight_decay=0.0):
            super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    folded = compile_model("mup", MLP, width=128, base_width=64, optimizer="lion")
    assert type(folded.optimizer(MyLion)) is MyLion
    with pytest.raises(CompileError, match=r"MyLion: the plan was compiled for signsgd and MyLion runs lion"):
        compile_model("mup", MLP, width=128, base_width=64, optimizer="signsgd").optimizer(MyLion)
    with pytest.raises(CompileError, match=r"an unknown optimizer family"):   # multipliers folded: refused
        folded.optimizer(Lion8bit)
    plain = compile_model("sp", MLP, width=128, base_width=64, optimizer="lion")
    assert type(plain.optimizer(Lion8bit)) is Lion8bit                          # nothing folded: the user's call
