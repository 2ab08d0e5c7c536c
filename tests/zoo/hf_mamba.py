"""HuggingFace ``MambaForCausalLM`` (transformers.models.mamba; Mamba-1), tiny random-init config, CPU slow path.

Config: ``MambaConfig(vocab_size=256, hidden_size=width, state_size=4, num_hidden_layers=depth, expand=2,
conv_kernel=4, time_step_rank="auto" (-> ceil(width/16)), use_bias=False, use_conv_bias=True,
hidden_act="silu", residual_in_fp32=True, tie_word_embeddings=True, use_mambapy=False,
pad/bos/eos_token_id=0, use_cache=False)``.  Sequence length 16; causal LM; next-token targets.
No attention, so no attn_implementation.

width -> hidden_size; intermediate_size = expand*width = 2*width; time_step_rank = ceil(width/16)
(4 at 64, 8 at 128, 32 at 512 -- it SCALES with width).  state_size = 4 is fixed.  depth -> num_hidden_layers.

Structure:
  backbone.embeddings [256, w]
  backbone.layers.i: norm (RMSNorm, fp32) -> mixer -> residual add (residual kept in fp32)
    mixer.in_proj     nn.Linear(w, 4w, bias=False)  -> chunk into x [2w] and gate z [2w]
    mixer.conv1d      nn.Conv1d(2w, 2w, k=4, groups=2w, padding=3) -- DEPTHWISE causal conv; the module is
                      NOT called: its weight is used functionally via F.conv1d(x, weight.squeeze(1).unsqueeze(1),
                      bias, padding=3, groups=2w)[..., :seq] in ``causal_conv1d_fn``, then SiLU.
    mixer.x_proj      nn.Linear(2w, rank + 2*state, bias=False) -> split [dt (rank) | B (state) | C (state)];
                      its OUTPUT dim is part width-scaling (rank) and part fixed (2*state).
    mixer.dt_proj     nn.Linear(rank, 2w, bias=True) -- weight used functionally: ``dt_proj.weight @ dt^T``;
                      its bias is added inside the scan before softplus (delta_bias).  Both dims scale.
    mixer.A_log       Parameter [2w, state] (A = -exp(A_log), S4D-real init log(1..state))
    mixer.D           Parameter [2w] (skip term, init 1)
    mixer.out_proj    nn.Linear(2w, w, bias=False)
    Selective scan: pure-torch sequential loop over the 16 time steps (``mamba_selective_scan``; the
    associative-scan branch only runs under torch.compile, not export; mamba_ssm/causal_conv1d kernels are
    not installed, so ``mamba_inner_fn`` returns None and the slow path runs even in training mode).
  backbone.norm_f (RMSNorm); lm_head nn.Linear(w, 256, bias=False) TIED to backbone.embeddings.weight
    (listed once, as backbone.embeddings.weight); logits are cast ``.float()``.
Width-dependent constants: none in forward.  Init: initializer_range 0.1 -> embeddings and in_proj/x_proj
  normal(0, 0.1) (width-independent!), conv1d and out_proj kaiming_uniform(a=sqrt 5),
  dt_proj.weight uniform(+-rank**-0.5), dt_proj.bias = softplus^-1(dt), dt log-uniform in [1e-3, 1e-1].
Front ends: torch.fx.symbolic_trace FAILS; torch.export(strict=False) works (the 16-step scan is unrolled).
"""

import torch
from transformers import MambaConfig, MambaForCausalLM

VOCAB = 256
SEQ_LEN = 16


def build(width: int, depth: int = 2) -> torch.nn.Module:
    config = MambaConfig(
        vocab_size=VOCAB,
        hidden_size=width,
        state_size=4,
        num_hidden_layers=depth,
        expand=2,
        conv_kernel=4,
        time_step_rank="auto",
        use_bias=False,
        use_conv_bias=True,
        hidden_act="silu",
        residual_in_fp32=True,
        tie_word_embeddings=True,
        use_mambapy=False,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    return MambaForCausalLM(config)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, VOCAB, (batch_size, SEQ_LEN + 1), generator=g)
    return (seq[:, :-1].contiguous(),), seq[:, 1:].contiguous()
