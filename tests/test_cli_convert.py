"""``graft plan`` and ``graft convert``: exit codes, the written report and manifest, output
formats, and outputs that a fresh process loads with ``strict=True``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from app.cli import cli
from app.engine.keys import group_keys
from app.engine.pipeline import convert
from app.engine.recipe import load_recipe
from app.engine.target import Target, skeleton_from_module
from tests.engine._models import SmallNet, save_sd, save_st, small_state_dict
from tests.fixtures import REPO_ROOT, published_file

N = len(small_state_dict())


def graft(*args: str | Path) -> Any:
    """``graft ARGS`` in this process (stdout and stderr apart)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def graft_process(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``graft ARGS`` as a real process, through the console entry point."""
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def python(code: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter running ``code`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _files(tmp_path: Path) -> tuple[Path, Path, Path, dict[str, torch.Tensor]]:
    """A DataParallel-saved source with a renamed backbone, a SmallNet skeleton, a recipe."""
    sd = small_state_dict(0)
    source = {"module.backbone." + k: v for k, v in sd.items()}
    src = save_sd(source, tmp_path / "src.pt")
    skeleton = tmp_path / "smallnet.json"
    skeleton.write_text(json.dumps(skeleton_from_module(SmallNet())))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "version: 1\nrename:\n  - {prefix: 'backbone.', to: ''}\nstrict: true\nfreeze_bn: true\n"
    )
    return src, skeleton, recipe, sd


def test_plan_prints_the_grouped_text(tmp_path: Path) -> None:
    src, skeleton, recipe, _ = _files(tmp_path)

    result = graft("plan", src, skeleton, "-r", recipe)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "graft report: OK"
    assert f"target keys  loaded {N} · adapted 0 · tied 0 · initialized 0 · kept 0" in lines
    (convs,) = group_keys([f"layer1.{b}.conv{c}.weight" for b in (0, 1) for c in (1, 2)])
    assert convs.pattern.startswith("layer1.{0..1}.conv")  # four keys on one line
    assert f"  {convs.pattern}  <- backbone.{convs.pattern}  [rename[0]]" in lines
    assert not any(line.startswith("verification") for line in lines)  # a dry run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml", "smallnet.json", "src.pt"]


def test_plan_json_equals_the_library_dry_run(tmp_path: Path) -> None:
    src, skeleton, recipe, _ = _files(tmp_path)

    result = graft("plan", src, skeleton, "-r", recipe, "--json")

    assert result.exit_code == 0, result.output
    expected = convert(
        src, Target.from_skeleton(skeleton), load_recipe(recipe), output=None, dry_run=True
    )
    assert json.loads(result.stdout) == expected.report
    assert expected.report["source"]["stripped_prefix"] == "module."


def test_convert_writes_weights_report_and_manifest(tmp_path: Path) -> None:
    src, skeleton, recipe, sd = _files(tmp_path)
    out, rep = tmp_path / "out.safetensors", tmp_path / "rep.json"

    result = graft("convert", src, skeleton, "-r", recipe, "-o", out, "--report", rep)

    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # piped: no progress bar
    report = json.loads(rep.read_text())
    assert report["schema"] == "graft.report/v1" and report["ok"] is True
    assert report["summary"]["loaded"] == N
    assert report["verification"] == {"checked": N, "equal": N, "strict_load": True}
    assert result.stdout.splitlines()[-1] == (
        f"verification  {N}/{N} equal to the source, strict load ok"
    )
    assert not (tmp_path / "rep.manifest.json").exists()  # the manifest goes beside OUT
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert manifest["bn_eval"] == [
        "bn1",
        "layer1.0.bn1",
        "layer1.0.bn2",
        "layer1.1.bn1",
        "layer1.1.bn2",
    ]
    written = load_file(str(out))
    assert set(written) == set(sd)
    for key, value in sd.items():
        assert torch.equal(written[key], value), key

    # ...and a fresh process builds the model and loads the file with strict=True
    loaded = python(
        "import torch\n"
        "from safetensors.torch import load_file\n"
        "from tests.engine._models import SmallNet\n"
        "model = SmallNet()\n"
        f"missing = model.load_state_dict(load_file({str(out)!r}), strict=True)\n"
        "print(missing, float(model.layer1[1].bn2.running_var.sum()))\n"
    )
    assert loaded.returncode == 0, loaded.stderr
    expected_var = float(sd["layer1.1.bn2.running_var"].sum())
    assert loaded.stdout.split() == ["<All", "keys", "matched", "successfully>", str(expected_var)]


def test_strict_failure_exits_1_and_still_writes_the_report(tmp_path: Path) -> None:
    src, skeleton, recipe, _ = _files(tmp_path)
    extra = save_sd(
        {**torch.load(src, weights_only=True), "module.aux.w": torch.ones(2)}, tmp_path / "extra.pt"
    )
    out, rep = tmp_path / "out.safetensors", tmp_path / "rep.json"

    result = graft("convert", extra, skeleton, "-r", recipe, "-o", out, "--report", rep)

    assert result.exit_code == 1
    assert "refused by the recipe's policy" in result.stderr
    assert not out.exists()
    report = json.loads(rep.read_text())
    assert report["ok"] is False
    assert report["errors"] == ["strict: source keys not used: aux.w"]
    assert report["verification"] is None
    assert "  x strict: source keys not used: aux.w" in result.stdout


def test_invalid_recipe_exits_2_with_one_line(tmp_path: Path) -> None:
    src, skeleton, _, _ = _files(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rename": [{"prefix": "a.", "to": "b."}, {"regex": "(", "to": ""}]}))

    result = graft_process("convert", src, skeleton, "-r", bad, "-o", tmp_path / "out.st")

    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("graft: error: rename[1]: invalid regex '('")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.st").exists()


def test_torch_format_output(tmp_path: Path) -> None:
    src, skeleton, recipe, sd = _files(tmp_path)
    pt, st = tmp_path / "out.pt", tmp_path / "out.safetensors"

    assert (
        graft("convert", src, skeleton, "-r", recipe, "-o", pt, "--format", "torch").exit_code == 0
    )
    assert graft("convert", src, skeleton, "-r", recipe, "-o", st).exit_code == 0

    loaded = torch.load(pt, weights_only=True)
    reference = load_file(str(st))
    assert list(loaded) == list(reference)
    for key, value in reference.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
        assert torch.equal(value, sd[key])
    bad = graft("convert", src, skeleton, "-o", tmp_path / "x", "--format", "onnx")
    assert bad.exit_code == 2 and not (tmp_path / "x").exists()


def test_real_legacy_checkpoint_loads_strict_in_a_fresh_process(tmp_path: Path) -> None:
    alex = published_file("lpips", "weights/v0.1/alex.pth")
    reference = torch.load(alex, map_location="cpu", weights_only=True)
    template = save_st(
        {k: torch.zeros_like(v) for k, v in reference.items()}, tmp_path / "lin.safetensors"
    )
    out = tmp_path / "alex.safetensors"

    result = graft("convert", alex, template, "-o", out, "--report", tmp_path / "rep.json")

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "rep.json").read_text())
    assert report["source"]["format"] == "torch-legacy"
    assert report["verification"] == {"checked": 5, "equal": 5, "strict_load": True}
    # LPIPS's NetLinLayer: Sequential(Dropout, Conv2d(c, 1, 1, bias=False)), five of them
    loaded = python(
        "import torch\n"
        "from torch import nn\n"
        "from safetensors.torch import load_file\n"
        "class Lin(nn.Module):\n"
        "    def __init__(self, c):\n"
        "        super().__init__()\n"
        "        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))\n"
        "root = nn.Module()\n"
        "for i, c in enumerate([64, 192, 384, 256, 256]):\n"
        "    root.add_module(f'lin{i}', Lin(c))\n"
        f"print(root.load_state_dict(load_file({str(out)!r}), strict=True))\n"
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "<All keys matched successfully>"
    written = load_file(str(out))
    for key, value in reference.items():
        assert torch.equal(written[key], value), key


def test_skeleton_describes_an_importable_factory_exactly(tmp_path: Path) -> None:
    out = tmp_path / "target.json"
    result = graft(
        "skeleton", "tests.engine._models:SmallNet", "--kwargs", '{"in_chans": 4}', "-o", out
    )
    assert result.exit_code == 0, result.output
    skeleton = json.loads(out.read_text())
    assert skeleton == skeleton_from_module(SmallNet(in_chans=4))
    tensors = skeleton["tensors"]
    assert tensors["conv1.weight"] == {
        "shape": [4, 4, 3, 3],
        "dtype": "float32",
        "kind": "parameter",
        "module": "Conv2d",
    }
    assert tensors["bn1.running_mean"]["kind"] == "buffer"
    assert tensors["bn1.num_batches_tracked"] == {
        "shape": [],
        "dtype": "int64",
        "kind": "buffer",
        "module": "BatchNorm2d",
    }
    # and it is a usable target
    src = save_sd(small_state_dict(0), tmp_path / "src.pt")
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"adapt": [{"match": "conv1.weight", "op": "channels"}]}))
    converted = graft("convert", src, out, "-r", recipe, "-o", tmp_path / "out.st", "--json")
    assert converted.exit_code == 0, converted.output
    assert json.loads(converted.stdout)["summary"]["adapted"] == 1


def test_skeleton_of_something_unimportable_exits_2() -> None:
    result = graft_process("skeleton", "no_such_module:Net")
    assert result.returncode == 2
    assert (
        result.stderr
        == "graft: error: cannot import no_such_module:Net: No module named 'no_such_module'\n"
    )


def test_the_output_name_sets_the_format_and_a_contradiction_is_refused(tmp_path: Path) -> None:
    src, skeleton, recipe, sd = _files(tmp_path)

    for name in ("m.pth", "m.bin"):
        assert graft("convert", src, skeleton, "-r", recipe, "-o", tmp_path / name).exit_code == 0
        assert (tmp_path / name).read_bytes()[:2] == b"PK"  # a torch zip, not safetensors
        loaded = torch.load(tmp_path / name, weights_only=True)
        assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert (
        graft("convert", src, skeleton, "-r", recipe, "-o", tmp_path / "m.safetensors").exit_code
        == 0
    )
    assert set(load_file(str(tmp_path / "m.safetensors"))) == set(sd)

    bad = graft(
        "convert", src, skeleton, "-r", recipe, "-o", tmp_path / "x.pt", "--format", "safetensors"
    )

    assert bad.exit_code == 2
    assert bad.stderr == (
        "graft: error: --format safetensors contradicts -o x.pt (a torch name): "
        "drop --format or rename the output\n"
    )
    assert not (tmp_path / "x.pt").exists()


def test_the_one_rule_for_output_names() -> None:
    """``graft convert`` and ``graft submit`` (app/client/submit.py) both ask this function."""
    from app.engine.options import format_for_path

    names = ("a.pt", "a.PTH", "a.bin", "a.safetensors", "folder", "a.st")
    assert [format_for_path(Path(n)) for n in names] == [
        "torch", "torch", "torch", "safetensors", None, None,
    ]  # fmt: skip


def test_the_manifest_is_written_beside_the_output_whenever_it_says_something(
    tmp_path: Path,
) -> None:
    src, skeleton, recipe, _ = _files(tmp_path)  # freeze_bn: true
    plain = tmp_path / "plain.yaml"
    plain.write_text("version: 1\nrename:\n  - {prefix: 'backbone.', to: ''}\n")

    assert graft("convert", src, skeleton, "-r", recipe, "-o", tmp_path / "m.pth").exit_code == 0
    assert graft("convert", src, skeleton, "-r", plain, "-o", tmp_path / "p.pth").exit_code == 0

    manifest = json.loads((tmp_path / "m.manifest.json").read_text())
    assert manifest["schema"] == "graft.manifest/v1" and len(manifest["bn_eval"]) == 5
    assert not (tmp_path / "p.manifest.json").exists()  # nothing to say: no file


def test_a_missing_output_folder_is_named_as_given(tmp_path: Path) -> None:
    src, skeleton, recipe, _ = _files(tmp_path)

    result = graft_process("convert", src, skeleton, "-r", recipe, "-o", "nodir/sub/x.safetensors")

    assert result.returncode == 2
    assert result.stderr == "graft: error: no such output folder: nodir/sub\n"


def test_each_rule_says_what_it_changed_and_an_idle_adapt_is_a_warning(tmp_path: Path) -> None:
    src, skeleton, _, _ = _files(tmp_path)
    recipe = tmp_path / "adapt.yaml"
    recipe.write_text(
        "version: 1\nrename:\n  - {prefix: 'backbone.', to: ''}\n"
        "adapt:\n  - {match: 'conv1.weight', op: channels, fill: repeat}\n"
    )

    result = graft("plan", src, skeleton, "-r", recipe, "--json")
    text = graft("plan", src, skeleton, "-r", recipe)

    assert result.exit_code == 0 and text.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rules"] == [
        {"rule": "rename[0]", "matched": N, "applied": N, "pattern": "prefix 'backbone.'"},
        {"rule": "adapt[0]", "matched": 1, "applied": 0, "pattern": "conv1.weight"},
        {"rule": "init[0]", "matched": N, "applied": 0, "pattern": "*"},  # nothing initialised
    ]
    warning = (
        "unapplied: adapt[0] (conv1.weight) matched 1 keys but changed none: shapes already "
        "equal: did you forget `--target-kwargs`?"
    )
    assert report["warnings"] == [warning]
    assert text.stderr == f"graft: WARNING: {warning}\n"
    lines = text.stdout.splitlines()
    start = lines.index("rules (3, 0 matched nothing, 1 changed nothing)")
    assert lines[start + 1 : start + 5] == [
        "  rule         matched applied  pattern",
        f"  rename[0]         {N}      {N}  prefix 'backbone.'",
        "  adapt[0]           1       0  conv1.weight  <- CHANGED NOTHING",
        f"  init[0]           {N}       0  *",
    ]


def test_an_architecture_name_without_arch_gets_a_hint(tmp_path: Path) -> None:
    src, _, _, _ = _files(tmp_path)

    result = graft_process("plan", src, "graft_mobilenet")
    unknown = graft_process("plan", src, "no_such_thing")

    assert result.returncode == 2
    assert result.stderr == (
        "graft: error: cannot read graft_mobilenet: no such file; "
        "did you mean `arch:graft_mobilenet`?\n"
    )
    assert unknown.returncode == 2 and "arch:" not in unknown.stderr
