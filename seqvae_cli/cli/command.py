"""The `seqvae` command: check the overrides, claim the run folder, hand the verb to its Hydra app."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from seqvae_cli.errors import SeqvaeError

# torch, Hydra and the apps are imported inside the functions that need them: `seqvae --help` and a mistyped verb
# answer at once (importing torch takes seconds) rather than after the whole library has loaded.

log = logging.getLogger("seqvae")


USAGE = """usage: seqvae VERB [hydra overrides]

verbs:
  train    train a model (default: MLP-VAE on MNIST); returns the validation metric for sweeps
           e.g. seqvae train model.latent_dim=2 trainer.max_epochs=5 | seqvae train -m model.latent_dim=2,10
  eval     score a trained run: -ELBO, reconstruction, KL, IW-NLL, active units, mutual information
           e.g. seqvae eval run_dir=outputs/mlp_vae-mnist/2026-11-21/10-00-00 (k=100; iw_samples=5000: paper-grade)
  sample   write pictures (samples, reconstructions, interpolations, traversals, latent scatter)
           e.g. seqvae sample run_dir=outputs/mlp_vae-mnist/2026-11-21/10-00-00
  report   one row per job of a multirun folder, sorted by the optimised metric (also written as CSV)
           e.g. seqvae report multirun/mlp_vae-mnist/2026-11-21/10-00-00

`seqvae VERB --help` lists that verb's config groups and options; `seqvae VERB --cfg job` prints the config."""


VERBS = ("train", "eval", "sample")


# Flags that change which config Hydra composes, or print help instead: the pre-check below stands aside.
_CONFIG_FLAGS = ("-h", "--help", "--hydra-help", "-cn", "--config-name", "-cp", "--config-path", "-cd",
                 "--config-dir", "--info", "--shell-completion", "-sc", "--experimental-rerun")


_MAX_JOBS_CHECKED = 64


def check_overrides(verb: str, args: list[str]) -> None:
    """Compose the config as Hydra is about to, each job of a sweep too, and turn an unknown group option or key
    into one SeqvaeError line that lists what exists (Hydra's own report spans lines and suggests `+key=`, which
    adds a key nothing reads). Anything this check cannot judge (optuna ranges, other failures) is left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
    from seqvae_cli.config.runtime import CONF_DIR

    if any(a.split("=", 1)[0] in _CONFIG_FLAGS for a in args):
        return
    overrides, skip_next = [], False
    for a in args:
        if skip_next:
            skip_next = False
        elif a in ("-c", "--cfg", "-p", "--package"):
            skip_next = True   # the flag's value
        elif not a.startswith("-"):
            overrides.append(a)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        discrete = [o for o in parsed if not o.is_sweep_override() or o.is_discrete_sweep()]
        jobs = BasicSweeper.split_arguments(discrete, None)[0] if discrete else [[]]
    except HydraException:
        return   # a syntax error: Hydra reports it with its position
    check_optional_groups(parsed, Path(CONF_DIR))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for job in jobs[:_MAX_JOBS_CHECKED]:
            try:
                compose(verb, overrides=job, return_hydra_config=True)
            except MissingConfigException as exc:
                group, _, option = (exc.missing_cfg_file or "").rpartition("/")
                if not exc.options:
                    return
                raise SeqvaeError(f"{group}={option}: no such option in config group '{group}'; choose one of "
                                  f"{', '.join(exc.options)}") from None
            except ConfigCompositionException as exc:
                key = next((o.key_or_group for o in parsed if f"'{o.key_or_group}'" in str(exc)), None)
                if key is None:
                    return
                rest = [o for o in job if o.split("=", 1)[0].lstrip("+~") != key]
                parent = key.rpartition(".")[0]
                try:
                    node = compose(verb, overrides=rest).get(parent) if parent else compose(verb, overrides=rest)
                except Exception:
                    return
                known = ", ".join(sorted(str(k) for k in node.keys())) if hasattr(node, "keys") else ""
                where = f"in '{parent}'" if parent else "at the top level"
                raise SeqvaeError(f"{key}: no such key{' ' + where if known else ''}"
                                  f"{'; its keys are ' + known if known else ''} (check the spelling; "
                                  f"`seqvae {verb} --cfg job` prints the whole config)") from None


# Groups that train.yaml lists as optional: Hydra skips an option of theirs that does not exist, so a typo there
# (recipe=nnoe) would silently train something else.
OPTIONAL_GROUPS = ("recipe",)


def check_optional_groups(parsed: list, conf: Path) -> None:
    for override in parsed:
        group = override.key_or_group.lstrip("+~")
        if group not in OPTIONAL_GROUPS or override.is_delete():
            continue
        values = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
        options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        for value in values:
            if value is not None and str(value) not in options:
                raise SeqvaeError(f"{group}={value}: no such option in config group '{group}'; choose one of "
                                  f"{', '.join(options)}")


def claim_run_folder(args: list[str]) -> Path | None:
    """`seqvae train`, before Hydra writes into the run folder (.hydra/, train.log): refuse a folder that cannot be
    written, that another training holds, or that holds another run without trainer.resume or trainer.overwrite,
    and lock it for this process. Returns the folder locked, or None where the command line does not name one
    plainly (a sweep, the default outputs/NAME/DATE/TIME, an interpolation): train_app checks those after Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from seqvae_cli.training import runfolder

    multirun = any(a in ("-m", "--multirun") for a in args)
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return None   # --cfg, --info, -cn ...: Hydra prints or composes something else
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except HydraException:
        return None   # Hydra reports the syntax error
    if multirun or any(o.is_sweep_override() for o in parsed):
        runfolder.check_writable(Path("multirun"), "sweep folder")
        return None
    values = {o.key_or_group: o.value() for o in parsed if not o.is_delete()}
    run_dir = values.get("run_dir")
    if any(k.startswith("hydra.") for k in values) or "${" in str(run_dir):
        return None
    if run_dir is None:
        runfolder.check_writable(Path("outputs"), "outputs folder")
        return None
    target = Path(str(run_dir))
    runfolder.check_writable(target)
    runfolder.acquire_lock(target)
    try:
        runfolder.check_run_folder(target, values.get("trainer.resume", False),
                                   bool(values.get("trainer.overwrite", False)))
    except SeqvaeError:
        runfolder.release_lock(target)
        raise
    return target


def completion_query(args: list[str]) -> list[str]:
    """Hydra's installed completion calls `seqvae -sc query=SHELL` with the line being typed in $COMP_LINE: complete
    the verb itself, else hand the query to that verb's app with the verb taken out of the line (Hydra's parser
    expects `APP overrides...`). Returns the arguments to run, or [] when this answered already."""
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    typing_verb = len(words) < 2 or (len(words) == 2 and not line.endswith(" "))
    if typing_verb:
        prefix = words[1] if len(words) == 2 else ""
        print(" ".join(v for v in (*VERBS, "report") if v.startswith(prefix)))
        return []
    if words[1] not in VERBS:
        return []
    os.environ["COMP_LINE"] = line.replace(f" {words[1]}", "", 1)
    if os.environ.get("COMP_POINT", "").isdigit():
        os.environ["COMP_POINT"] = str(max(0, int(os.environ["COMP_POINT"]) - len(words[1]) - 1))
    return [words[1], *args]


def main() -> None:
    try:
        try:
            _main(sys.argv[1:])
        finally:   # output to a pipe is buffered: write it here, where a closed pipe can still be caught
            sys.stdout.flush()
    except BrokenPipeError:
        # `seqvae ... | head`: the reader left. Point stdout at /dev/null so Python's exit flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)   # 128 + SIGPIPE, what a shell reports for a command cut off by its pipe


def _main(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if args[0] in ("-sc", "--shell-completion"):
        args = completion_query(args)
        if not args:
            return
    verb, rest = args[0], args[1:]
    if verb == "report":
        from seqvae_cli.cli.report import main as report_main
        sys.exit(report_main(rest))
    if verb not in VERBS:
        print(f"seqvae: error: unknown verb {verb!r}; expected one of train, eval, sample, report "
              f"(seqvae --help lists them)", file=sys.stderr)
        sys.exit(2)
    from seqvae_cli.cli.apps import eval_app, sample_app, train_app
    from seqvae_cli.config.runtime import register_resolvers
    from seqvae_cli.training import distributed, runfolder
    register_resolvers()
    claimed = None
    try:
        # The user's plugin parts ($SEQVAE_PARTS, entry points): a module that fails to import stops the command
        # here, before Hydra creates a run folder (check_parts imports them too, for in-process callers).
        from seqvae_cli.parts import load_plugins
        load_plugins()
        check_overrides(verb, rest)
        if verb == "train" and not distributed.launched_by_torchrun():
            claimed = claim_run_folder(rest)
    except SeqvaeError as exc:
        print(f"seqvae: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if verb == "train" and distributed.launched_by_torchrun():
        distributed.init_from_torchrun()
        if distributed.rank() > 0:  # rank 0 alone writes the run folder's .hydra/ and train.log
            rest = rest + ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    if any(a.split("=", 1)[0] in ("--shell-completion", "-sc") for a in rest):
        # Hydra names the completed command after argv[0]: it must be a command that exists (`seqvae`, not
        # `seqvae-train`); completion_query() above takes the verb out of the line Hydra completes.
        sys.argv = ["seqvae"] + rest
    else:
        sys.argv = [f"seqvae {verb}"] + rest
    try:
        {"train": train_app, "eval": eval_app, "sample": sample_app}[verb]()
    except KeyboardInterrupt:   # outside the training loop, which stops on Ctrl-C with its own line
        print(f"seqvae: error: {verb} stopped by Ctrl-C (SIGINT) before it finished", file=sys.stderr)
        sys.exit(130)
    finally:
        if claimed is not None:
            runfolder.release_lock(claimed)
        distributed.shutdown()


if __name__ == "__main__":
    main()
