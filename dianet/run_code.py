"""Launch the paper's four CIFAR-100 recipes with ``dianet/cifar.py`` (the official ``run_code.py``).

    python dianet/run_code.py                       # the ResNet-164 recipe (the one the official file runs)
    python dianet/run_code.py --recipe all --dry-run
    python dianet/run_code.py --recipe wrn52_4 -- --amp bf16 --channels-last

Arguments after ``--`` are appended to every command (e.g. ``--data-root``, speed flags).
The recipes are data: one YAML file each in ``dianet/configs/`` (``--recipe my_recipe.yaml`` runs another).
"""
import argparse
import glob
import os
import shlex
import subprocess
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.config import ConfigError, read_yaml  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
CIFAR_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar.py")


def _flag_args(flags, source):
    """A recipe's ``flags`` mapping (flag -> value, list of values, true for a bare switch) as argv."""
    if not isinstance(flags, dict) or not flags:
        raise ConfigError(f"{source}: 'flags' must be a mapping of cifar.py flags to values")
    argv = []
    for flag, value in flags.items():
        if not isinstance(flag, str) or not flag.startswith("-"):
            raise ConfigError(f"{source}: {flag!r} is not a flag (write it as on the command line, e.g. --epochs)")
        values = value if isinstance(value, list) else [value]
        if value is False or value is None:
            continue
        if value is True:
            argv.append(flag)
            continue
        if not values or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"{source}: {flag} must be a value or a list of values, got {value!r}")
        argv += [flag] + [str(v) for v in values]
    return argv


def load_recipe(path):
    """The cifar.py arguments of the recipe file ``path``: the model flags of its ``variant`` (a named variant
    of ``dianet``, declared once in ``dianet/models.py``) followed by its ``flags``."""
    data = read_yaml(path)
    unknown = set(data) - {"description", "order", "variant", "flags"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)} (a recipe has description, order, variant, "
                          f"flags)")
    argv = []
    if data.get("variant") is not None:
        from dianet.cifar import variant_args
        from common.registry import UnknownModelError

        try:
            argv = variant_args(str(data["variant"]))
        except (UnknownModelError, ValueError) as err:
            raise ConfigError(f"{path}: variant: {err}") from None
    return argv + _flag_args(data.get("flags"), path)


def recipes():
    """The recipes of ``dianet/configs``: name -> file, in their ``order`` (the order of ``--recipe all``)."""
    files = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))
    files.sort(key=lambda f: (read_yaml(f).get("order", 1 << 30), os.path.basename(f)))
    return {os.path.splitext(os.path.basename(f))[0]: f for f in files}


def commands(recipe, extra=()):
    """The cifar.py command lines of ``recipe``: a name of :func:`recipes`, ``all``, or a recipe .yaml file."""
    known = recipes()
    if recipe == "all":
        files = list(known.values())
    elif recipe in known:
        files = [known[recipe]]
    elif recipe.endswith((".yaml", ".yml")):
        files = [recipe]
    else:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of: {', '.join(list(known) + ['all'])}, "
                          f"or give a recipe .yaml file")
    return [[sys.executable, CIFAR_PY] + load_recipe(f) + list(extra) for f in files]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="resnet164",
                   help="a recipe of dianet/configs (resnet164, preresnet164, wrn52_4, resnext101), all, "
                        "or a recipe .yaml file")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = p.parse_args(argv)
    try:
        cmds = commands(args.recipe, extra)
    except ConfigError as e:
        p.error(str(e))
    for cmd in cmds:
        print(" ".join(shlex.quote(c) for c in cmd), flush=True)
        if not args.dry_run:
            rc = subprocess.call(cmd)
            if rc:
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
