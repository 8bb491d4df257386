"""The public alignment benchmark's layout pairs, each with its ground truth written by hand.

Every pair builds its source and target key lists *and* the truth from one explicit table
(which source key, with which ops, feeds each target key), independently of the aligner.
Shapes are what the real models hold. ``AMBIGUOUS`` pairs have target keys that nothing can
tell apart: their truth lists only the keys that can be decided.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from app.engine.meta import TensorInfo

__all__ = ["PAIRS", "Pair"]

Shape = tuple[int, ...]
Truth = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]  # target -> (sources, ops)


@dataclass
class Pair:
    """A source layout, a target layout and the truth between them."""

    name: str
    source: dict[str, TensorInfo] = field(default_factory=dict)
    target: dict[str, TensorInfo] = field(default_factory=dict)
    truth: Truth = field(default_factory=dict)
    ambiguous: set[str] = field(default_factory=set)  # targets nothing can decide

    def add(self, src: str | tuple[str, ...], s_shape: Shape | None, tgt: str, t_shape: Shape,
            ops: tuple[str, ...] = ()) -> None:  # fmt: skip
        """One target key fed by ``src`` (its shape given once per source key)."""
        sources = (src,) if isinstance(src, str) else src
        if s_shape is not None:
            for s in sources:
                self.source[s] = TensorInfo(s, s_shape, "float32")
        self.target[tgt] = TensorInfo(tgt, t_shape, "float32")
        self.truth[tgt] = (sources, ops)

    def bn(self, src: str, tgt: str, c: int) -> None:
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            self.add(f"{src}.{leaf}", (c,), f"{tgt}.{leaf}", (c,))
        self.add(f"{src}.num_batches_tracked", (), f"{tgt}.num_batches_tracked", ())

    def linear(self, src: str, tgt: str, out: int, inp: int, *, bias: bool = True,
               transpose: bool = False, src_leaf: str = "weight",
               sep: str = ".") -> None:  # fmt: skip
        s_shape = (inp, out) if transpose else (out, inp)
        ops = ("transpose",) if transpose else ()
        self.add(f"{src}{sep}{src_leaf}", s_shape, f"{tgt}.weight", (out, inp), ops)
        if bias:
            self.add(f"{src}{sep}bias", (out,), f"{tgt}.bias", (out,))


def _div8(v: float) -> int:
    r = max(8, int(v + 4) // 8 * 8)
    return r + 8 if r < 0.9 * v else r


def mobilenetv2_tv_to_timm() -> Pair:
    """torchvision ``mobilenet_v2`` -> timm ``mobilenetv2_100``: names share nothing."""
    p = Pair("mobilenetv2 torchvision->timm (order+shape)")
    settings = [
        (1, 16, 1),
        (6, 24, 2),
        (6, 32, 3),
        (6, 64, 4),
        (6, 96, 3),
        (6, 160, 3),
        (6, 320, 1),
    ]
    p.add("features.0.0.weight", (32, 3, 3, 3), "conv_stem.weight", (32, 3, 3, 3))
    p.bn("features.0.1", "bn1", 32)
    chans, f = 32, 1
    for stage, (t, c, n) in enumerate(settings):
        for i in range(n):
            hidden, s, d = chans * t, f"features.{f}.conv", f"blocks.{stage}.{i}"
            if t == 1:
                p.add(
                    f"{s}.0.0.weight", (hidden, 1, 3, 3), f"{d}.conv_dw.weight", (hidden, 1, 3, 3)
                )
                p.bn(f"{s}.0.1", f"{d}.bn1", hidden)
                p.add(f"{s}.1.weight", (c, hidden, 1, 1), f"{d}.conv_pw.weight", (c, hidden, 1, 1))
                p.bn(f"{s}.2", f"{d}.bn2", c)
            else:
                p.add(f"{s}.0.0.weight", (hidden, chans, 1, 1), f"{d}.conv_pw.weight",
                      (hidden, chans, 1, 1))  # fmt: skip
                p.bn(f"{s}.0.1", f"{d}.bn1", hidden)
                p.add(
                    f"{s}.1.0.weight", (hidden, 1, 3, 3), f"{d}.conv_dw.weight", (hidden, 1, 3, 3)
                )
                p.bn(f"{s}.1.1", f"{d}.bn2", hidden)
                p.add(f"{s}.2.weight", (c, hidden, 1, 1), f"{d}.conv_pwl.weight", (c, hidden, 1, 1))
                p.bn(f"{s}.3", f"{d}.bn3", c)
            chans, f = c, f + 1
    p.add(f"features.{f}.0.weight", (1280, 320, 1, 1), "conv_head.weight", (1280, 320, 1, 1))
    p.bn(f"features.{f}.1", "bn2", 1280)
    p.linear("classifier.1", "classifier", 1000, 1280)
    return p


def resnet18_tv_to_detectron2() -> Pair:
    """torchvision ``resnet18`` -> Detectron2's ResNet names (stages renumbered, BN inside conv)."""
    p = Pair("resnet18 torchvision->detectron2")
    p.add("conv1.weight", (64, 3, 7, 7), "stem.conv1.weight", (64, 3, 7, 7))
    p.bn("bn1", "stem.conv1.norm", 64)
    chans = 64
    for stage in range(4):
        planes = 64 * 2**stage
        for b in range(2):
            s, d = f"layer{stage + 1}.{b}", f"res{stage + 2}.{b}"
            inp = chans if b == 0 else planes
            if b == 0 and stage:  # Detectron2 defines the shortcut first
                p.add(f"{s}.downsample.0.weight", (planes, chans, 1, 1), f"{d}.shortcut.weight",
                      (planes, chans, 1, 1))  # fmt: skip
                p.bn(f"{s}.downsample.1", f"{d}.shortcut.norm", planes)
            p.add(
                f"{s}.conv1.weight", (planes, inp, 3, 3), f"{d}.conv1.weight", (planes, inp, 3, 3)
            )
            p.bn(f"{s}.bn1", f"{d}.conv1.norm", planes)
            p.add(f"{s}.conv2.weight", (planes, planes, 3, 3), f"{d}.conv2.weight",
                  (planes, planes, 3, 3))  # fmt: skip
            p.bn(f"{s}.bn2", f"{d}.conv2.norm", planes)
        chans = planes
    p.linear("fc", "linear", 1000, 512)
    # torchvision registers the downsample last in each block
    first: dict[str, int] = {}
    for i, key in enumerate(p.source):
        first.setdefault(key.split(".")[0] + "." + key.split(".")[1], i)
    p.source = dict(
        sorted(
            p.source.items(),
            key=lambda kv: (
                first[kv[0].split(".")[0] + "." + kv[0].split(".")[1]],
                "downsample" in kv[0],
            ),
        )
    )
    return p


def bert_tf_to_hf(layers: int = 2, hidden: int = 32, inter: int = 64) -> Pair:
    """Original Google BERT (TF names, ``kernel`` [in, out], ``gamma``/``beta``) -> transformers."""
    p = Pair("bert TF->transformers (transposes)")
    e, h = "bert/embeddings", "bert.embeddings"
    p.add(f"{e}/word_embeddings", (99, hidden), f"{h}.word_embeddings.weight", (99, hidden))
    p.add(f"{e}/position_embeddings", (64, hidden), f"{h}.position_embeddings.weight", (64, hidden))
    p.add(
        f"{e}/token_type_embeddings", (2, hidden), f"{h}.token_type_embeddings.weight", (2, hidden)
    )
    p.add(f"{e}/LayerNorm/gamma", (hidden,), f"{h}.LayerNorm.weight", (hidden,))
    p.add(f"{e}/LayerNorm/beta", (hidden,), f"{h}.LayerNorm.bias", (hidden,))
    for i in range(layers):
        s, d = f"bert/encoder/layer_{i}", f"bert.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            p.linear(f"{s}/attention/self/{name}", f"{d}.attention.self.{name}", hidden, hidden,
                     transpose=True, src_leaf="kernel", sep="/")  # fmt: skip
        for src, dst, out, inp in (
            ("attention/output/dense", "attention.output.dense", hidden, hidden),
            ("intermediate/dense", "intermediate.dense", inter, hidden),
            ("output/dense", "output.dense", hidden, inter),
        ):
            p.linear(
                f"{s}/{src}", f"{d}.{dst}", out, inp, transpose=True, src_leaf="kernel", sep="/"
            )
        for src, dst in (("attention/output/LayerNorm", "attention.output.LayerNorm"),
                         ("output/LayerNorm", "output.LayerNorm")):  # fmt: skip
            p.add(f"{s}/{src}/gamma", (hidden,), f"{d}.{dst}.weight", (hidden,))
            p.add(f"{s}/{src}/beta", (hidden,), f"{d}.{dst}.bias", (hidden,))
    p.linear("bert/pooler/dense", "bert.pooler.dense", hidden, hidden, transpose=True,
             src_leaf="kernel", sep="/")  # fmt: skip
    # TF checkpoints list variables alphabetically
    p.source = dict(sorted(p.source.items()))
    return p


def llama_meta_to_hf(layers: int = 32, dim: int = 4096, inter: int = 11008,
                     vocab: int = 32000, kv_heads: int = 32, heads: int = 32) -> Pair:  # fmt: skip
    """Meta LLaMA (``wq``/``w1``…) -> transformers ``LlamaForCausalLM`` names (7B shapes)."""
    p = Pair(f"llama meta->transformers ({layers} layers)")
    kv = dim // heads * kv_heads
    p.add("tok_embeddings.weight", (vocab, dim), "model.embed_tokens.weight", (vocab, dim))
    for i in range(layers):
        s, d = f"layers.{i}", f"model.layers.{i}"
        for src, dst, out, inp in (
            ("attention.wq", "self_attn.q_proj", dim, dim),
            ("attention.wk", "self_attn.k_proj", kv, dim),
            ("attention.wv", "self_attn.v_proj", kv, dim),
            ("attention.wo", "self_attn.o_proj", dim, dim),
            ("feed_forward.w1", "mlp.gate_proj", inter, dim),
            ("feed_forward.w2", "mlp.down_proj", dim, inter),
            ("feed_forward.w3", "mlp.up_proj", inter, dim),
        ):
            p.linear(f"{s}.{src}", f"{d}.{dst}", out, inp, bias=False)
        p.add(f"{s}.attention_norm.weight", (dim,), f"{d}.input_layernorm.weight", (dim,))
        p.add(f"{s}.ffn_norm.weight", (dim,), f"{d}.post_attention_layernorm.weight", (dim,))
    p.add("norm.weight", (dim,), "model.norm.weight", (dim,))
    p.add("output.weight", (vocab, dim), "lm_head.weight", (vocab, dim))
    return p


def reverse(pair: Pair, name: str) -> Pair:
    """The same pair the other way round (1:1 keys only)."""
    out = Pair(name)
    for tgt, (sources, ops) in pair.truth.items():
        out.add(tgt, pair.target[tgt].shape, sources[0], pair.source[sources[0]].shape, ops)
    return out


def vit_fused_to_split(layers: int = 4, dim: int = 48) -> Pair:
    """timm ViT (fused ``qkv``) -> transformers ViT (``query``/``key``/``value``)."""
    p = Pair("vit timm->transformers (fused qkv)")
    p.add("cls_token", (1, 1, dim), "embeddings.cls_token", (1, 1, dim))
    p.add("pos_embed", (1, 17, dim), "embeddings.position_embeddings", (1, 17, dim))
    p.add("patch_embed.proj.weight", (dim, 3, 16, 16),
          "embeddings.patch_embeddings.projection.weight", (dim, 3, 16, 16))  # fmt: skip
    p.add("patch_embed.proj.bias", (dim,), "embeddings.patch_embeddings.projection.bias", (dim,))
    for i in range(layers):
        s, d = f"blocks.{i}", f"encoder.layer.{i}"
        p.add(f"{s}.norm1.weight", (dim,), f"{d}.layernorm_before.weight", (dim,))
        p.add(f"{s}.norm1.bias", (dim,), f"{d}.layernorm_before.bias", (dim,))
        for leaf, shape in (("weight", (dim, dim)), ("bias", (dim,))):
            whole = (3 * shape[0], *shape[1:])
            p.source[f"{s}.attn.qkv.{leaf}"] = TensorInfo(f"{s}.attn.qkv.{leaf}", whole, "float32")
            for k, name in enumerate(("query", "key", "value")):
                p.add(f"{s}.attn.qkv.{leaf}", None, f"{d}.attention.attention.{name}.{leaf}",
                      shape, (f"split(dim=0, {k + 1}/3)",))  # fmt: skip
        p.linear(f"{s}.attn.proj", f"{d}.attention.output.dense", dim, dim)
        p.add(f"{s}.norm2.weight", (dim,), f"{d}.layernorm_after.weight", (dim,))
        p.add(f"{s}.norm2.bias", (dim,), f"{d}.layernorm_after.bias", (dim,))
        p.linear(f"{s}.mlp.fc1", f"{d}.intermediate.dense", 4 * dim, dim)
        p.linear(f"{s}.mlp.fc2", f"{d}.output.dense", dim, 4 * dim)
    p.add("norm.weight", (dim,), "layernorm.weight", (dim,))
    p.add("norm.bias", (dim,), "layernorm.bias", (dim,))
    p.linear("head", "classifier", 10, dim)
    return p


def split_to_fused(layers: int = 4, dim: int = 48) -> Pair:
    """Separate ``q_proj``/``k_proj``/``v_proj`` -> one fused ``qkv`` (a merge)."""
    p = Pair("separate q/k/v -> fused qkv (merge)")
    for i in range(layers):
        s, d = f"model.layers.{i}.self_attn", f"blocks.{i}.attn"
        parts = tuple(f"{s}.{x}_proj.weight" for x in "qkv")
        for part in parts:
            p.source[part] = TensorInfo(part, (dim, dim), "float32")
        p.add(parts, None, f"{d}.qkv.weight", (3 * dim, dim), ("merge(dim=0)",))
        p.linear(f"{s}.o_proj", f"{d}.proj", dim, dim, bias=False)
        p.add(
            f"model.layers.{i}.input_layernorm.weight", (dim,), f"blocks.{i}.norm1.weight", (dim,)
        )
    return p


def gpt2_conv1d_to_linear(layers: int = 3, dim: int = 32) -> Pair:
    """transformers GPT-2 (``Conv1D``, [in, out]) -> a Linear layout with other names.

    ``attn.c_proj`` is square: no header can tell whether it is transposed, so its truth is
    listed as ambiguous (a correct aligner leaves it unresolved).
    """
    p = Pair("gpt2 Conv1D->Linear (transposes)")
    p.add("transformer.wte.weight", (50, dim), "tok_emb.weight", (50, dim))
    p.add("transformer.wpe.weight", (16, dim), "pos_emb.weight", (16, dim))
    for i in range(layers):
        s, d = f"transformer.h.{i}", f"blocks.{i}"
        p.add(f"{s}.ln_1.weight", (dim,), f"{d}.ln1.weight", (dim,))
        p.add(f"{s}.ln_1.bias", (dim,), f"{d}.ln1.bias", (dim,))
        p.linear(f"{s}.attn.c_attn", f"{d}.attn.qkv", 3 * dim, dim, transpose=True)
        p.linear(f"{s}.attn.c_proj", f"{d}.attn.proj", dim, dim, transpose=True)
        p.ambiguous.add(f"{d}.attn.proj.weight")
        p.add(f"{s}.ln_2.weight", (dim,), f"{d}.ln2.weight", (dim,))
        p.add(f"{s}.ln_2.bias", (dim,), f"{d}.ln2.bias", (dim,))
        p.linear(f"{s}.mlp.c_fc", f"{d}.mlp.fc1", 4 * dim, dim, transpose=True)
        p.linear(f"{s}.mlp.c_proj", f"{d}.mlp.fc2", dim, 4 * dim, transpose=True)
    p.add("transformer.ln_f.weight", (dim,), "ln_f.weight", (dim,))
    p.add("transformer.ln_f.bias", (dim,), "ln_f.bias", (dim,))
    return p


def convnext_timm_to_hf(dim: int = 16) -> Pair:
    """timm ConvNeXt -> transformers ConvNeXt (``conv_dw``/``dwconv``, ``fc1``/``pwconv1``)."""
    p = Pair("convnext timm->transformers")
    p.add("stem.0.weight", (dim, 3, 4, 4), "embeddings.patch_embeddings.weight", (dim, 3, 4, 4))
    p.add("stem.0.bias", (dim,), "embeddings.patch_embeddings.bias", (dim,))
    p.add("stem.1.weight", (dim,), "embeddings.layernorm.weight", (dim,))
    p.add("stem.1.bias", (dim,), "embeddings.layernorm.bias", (dim,))
    for stage in range(4):
        c = dim * 2**stage
        s, d = f"stages.{stage}", f"encoder.stages.{stage}"
        if stage:
            prev = c // 2
            p.add(f"{s}.downsample.0.weight", (prev,), f"{d}.downsampling_layer.0.weight", (prev,))
            p.add(f"{s}.downsample.0.bias", (prev,), f"{d}.downsampling_layer.0.bias", (prev,))
            p.add(f"{s}.downsample.1.weight", (c, prev, 2, 2), f"{d}.downsampling_layer.1.weight",
                  (c, prev, 2, 2))  # fmt: skip
            p.add(f"{s}.downsample.1.bias", (c,), f"{d}.downsampling_layer.1.bias", (c,))
        for b in range(2):
            sb, db = f"{s}.blocks.{b}", f"{d}.layers.{b}"
            p.add(f"{sb}.gamma", (c,), f"{db}.layer_scale_parameter", (c,))
            p.add(f"{sb}.conv_dw.weight", (c, 1, 7, 7), f"{db}.dwconv.weight", (c, 1, 7, 7))
            p.add(f"{sb}.conv_dw.bias", (c,), f"{db}.dwconv.bias", (c,))
            p.add(f"{sb}.norm.weight", (c,), f"{db}.layernorm.weight", (c,))
            p.add(f"{sb}.norm.bias", (c,), f"{db}.layernorm.bias", (c,))
            p.linear(f"{sb}.mlp.fc1", f"{db}.pwconv1", 4 * c, c)
            p.linear(f"{sb}.mlp.fc2", f"{db}.pwconv2", c, 4 * c)
    p.add("head.norm.weight", (8 * dim,), "layernorm.weight", (8 * dim,))
    p.add("head.norm.bias", (8 * dim,), "layernorm.bias", (8 * dim,))
    p.linear("head.fc", "classifier", 10, 8 * dim)
    return p


def ambiguous_pair() -> Pair:
    """Three same-shape source layers for two target layers, and names that say nothing."""
    p = Pair("deliberately ambiguous")
    p.add("stem.conv.weight", (8, 3, 3, 3), "input.conv.weight", (8, 3, 3, 3))
    p.bn("stem.bn", "input.norm", 8)
    for name in ("alpha", "delta", "omega"):
        key = f"mix.{name}.weight"
        p.source[key] = TensorInfo(key, (8, 8), "float32")
    for name in ("left", "right"):
        key = f"tail.{name}.weight"
        p.target[key] = TensorInfo(key, (8, 8), "float32")
        p.ambiguous.add(key)
    return p


PAIRS: dict[str, Callable[[], Pair]] = {
    "mobilenetv2": mobilenetv2_tv_to_timm,
    "resnet18-detectron2": resnet18_tv_to_detectron2,
    "bert-tf": bert_tf_to_hf,
    "llama7b-meta-hf": llama_meta_to_hf,
    "llama7b-hf-meta": lambda: reverse(llama_meta_to_hf(), "llama hf->meta (32 layers)"),
    "llama-gqa-tiny": lambda: llama_meta_to_hf(2, 64, 128, 100, kv_heads=2, heads=8),
    "vit-fused-qkv": vit_fused_to_split,
    "merge-qkv": split_to_fused,
    "gpt2-conv1d": gpt2_conv1d_to_linear,
    "convnext": convnext_timm_to_hf,
    "ambiguous": ambiguous_pair,
}
