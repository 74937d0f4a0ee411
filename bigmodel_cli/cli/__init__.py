"""The `bigmodel` command. Importing this module must stay fast: heavy libraries (torch,
gensim, jieba) are imported inside the commands that need them."""

from __future__ import annotations

import typer

from bigmodel_cli import __version__

# Each import registers its commands on `app`.
from bigmodel_cli.cli import embed as _embed  # noqa: E402,F401
from bigmodel_cli.cli import evaluate as _evaluate  # noqa: E402,F401
from bigmodel_cli.cli import explain as _explain  # noqa: E402,F401
from bigmodel_cli.cli import export as _export  # noqa: E402,F401
from bigmodel_cli.cli import finetune as _finetune  # noqa: E402,F401
from bigmodel_cli.cli import generate as _generate  # noqa: E402,F401
from bigmodel_cli.cli import init as _init  # noqa: E402,F401
from bigmodel_cli.cli import predict as _predict  # noqa: E402,F401
from bigmodel_cli.cli import preprocess as _preprocess  # noqa: E402,F401
from bigmodel_cli.cli import pretrain as _pretrain  # noqa: E402,F401
from bigmodel_cli.cli import quickstart as _quickstart  # noqa: E402,F401
from bigmodel_cli.cli import segment as _segment  # noqa: E402,F401
from bigmodel_cli.cli import status as _status  # noqa: E402,F401
from bigmodel_cli.cli._util import app, console


def _version(value: bool) -> None:
    if value:
        console.print(f"bigmodel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                           help="Show the version and exit."),
) -> None:
    """Raw Chinese or English text to a pretrained, fine-tuned and explained Transformer,
    with every step recorded in one workspace.

    [b]Pipeline[/b]: init -> preprocess -> embed -> pretrain -> finetune -> evaluate -> predict / explain / export

    [b]Examples[/b]:
      bigmodel quickstart                        # the whole lifecycle on real reviews, ~5 minutes
      bigmodel init reviews --lang zh
      cd reviews && bigmodel preprocess ~/reviews.csv --text-field review --label-field stars
      bigmodel pretrain --max-time 30m && bigmodel finetune && bigmodel evaluate
      bigmodel explain "隔音太差" && bigmodel status
    """


def main() -> None:
    app()
