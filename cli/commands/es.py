# SPDX-License-Identifier: MIT
"""`trackleak es`: set Elasticsearch up for TrackLeak's documents, and the Kibana dashboard.

`trackleak es setup` installs the index template (the mapping of trackleak.es.schema) and, where
the server has them, a data stream with a retention (trackleak.es.setup); `trackleak es dashboard`
writes the Kibana saved objects, the panels' queries and the alert rule (trackleak.es.dashboard)
for an index. Connection settings: the original variables (ELASTICSEARCH_URL, _INDEX, _USERNAME,
_PASSWORD, _API_KEY, _SSL_VERIFY, _CA_FILE, _CLIENT_CERT/_KEY; ENABLE_ELASTICSEARCH is not needed),
flags override them; secrets only from the environment (a flag would show them in ps).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from trackleak.cli._common import user_errors
from trackleak.errors import UserError
from trackleak.es import config as esconfig

es_app = typer.Typer(
    name="es",
    help="Elasticsearch: install the index template (es setup), write the Kibana dashboard (es dashboard).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_FAILED = 1
DRY_RUN_URL = "http://localhost:9200"


def _config(
    url: str | None,
    index: str | None,
    username: str | None,
    ca_file: str | None,
    client_cert: str | None,
    client_key: str | None,
    insecure: bool,
    *,
    need_url: bool = True,
) -> esconfig.EsConfig:
    env = dict(os.environ)
    for name, value in (
        (esconfig.ENV_URL, url),
        (esconfig.ENV_INDEX, index),
        (esconfig.ENV_USERNAME, username),
        (esconfig.ENV_CA_FILE, ca_file),
        (esconfig.ENV_CLIENT_CERT, client_cert),
        (esconfig.ENV_CLIENT_KEY, client_key),
    ):
        if value is not None:
            env[name] = value
    if insecure:
        env[esconfig.ENV_SSL_VERIFY] = "0"
    if not (env.get(esconfig.ENV_URL) or "").strip():
        if need_url:
            raise UserError(f"no Elasticsearch to set up: give --url or {esconfig.ENV_URL}")
        env[esconfig.ENV_URL] = DRY_RUN_URL
    env.pop(esconfig.ENV_QUEUE_BATCHES, None)  # the shipper's, not ours
    return esconfig.EsConfig.from_env(env, force=True)


UrlOpt = Annotated[
    Optional[str],
    typer.Option(
        "--url", help="Server URL (or its /_bulk endpoint). Default: $ELASTICSEARCH_URL.", show_default=False
    ),
]
IndexOpt = Annotated[
    Optional[str],
    typer.Option(
        "--index",
        help="Index (the template covers INDEX*). Default: $ELASTICSEARCH_INDEX, else trackleak-memory.",
        show_default=False,
    ),
]


@es_app.command("setup")
def setup(
    url: UrlOpt = None,
    index: IndexOpt = None,
    username: Annotated[
        Optional[str],
        typer.Option(
            "--username",
            help="Basic-auth user (password: $ELASTICSEARCH_PASSWORD; API key: $ELASTICSEARCH_API_KEY).",
            show_default=False,
        ),
    ] = None,
    ca_file: Annotated[
        Optional[str], typer.Option("--ca-file", help="PEM CA(s) to trust.", show_default=False)
    ] = None,
    client_cert: Annotated[
        Optional[str], typer.Option("--client-cert", help="PEM client certificate.", show_default=False)
    ] = None,
    client_key: Annotated[
        Optional[str], typer.Option("--client-key", help="PEM client key.", show_default=False)
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Do not verify the server's certificate (ELASTICSEARCH_SSL_VERIFY=0)."
        ),
    ] = False,
    retention: Annotated[
        str,
        typer.Option("--retention", help="Data stream retention (30d, 12h...; none: keep forever)."),
    ] = "30d",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be sent; send nothing.")
    ] = False,
) -> None:
    """Install the index template (and a data stream with a retention where the server has them)."""
    from trackleak.es import setup as essetup

    with user_errors():
        keep = essetup.check_retention(retention)
        config = _config(
            url, index, username, ca_file, client_cert, client_key, insecure, need_url=not dry_run
        )
        if dry_run:
            typer.echo(essetup.dry_run_text(config.url, config.index, keep))
            return
        from trackleak.es.shipper import make_client

        typer.echo(f"trackleak es setup: {config.scrub(config.describe().rsplit(' job_name=', 1)[0])}")
        try:
            client = make_client(config)
        except Exception as exc:  # bad certificate files and the like
            raise UserError(config.scrub(f"cannot set up the Elasticsearch client: {exc}")) from None
        try:
            result = essetup.install(client, config, retention=keep)
        except essetup.SetupError as exc:
            typer.echo(f"trackleak: error: {exc}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
        finally:
            client.close()
        for line in result.lines:
            typer.echo(line)
        if result.mode == "data-stream":
            typer.echo(
                f"installed: a data stream {config.index} (template {result.template} for {result.pattern})"
            )
        else:
            typer.echo(
                f"installed: a plain index template {result.template} for {result.pattern}, "
                f"index {config.index}"
            )


@es_app.command("dashboard")
def dashboard(
    index: IndexOpt = None,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Directory to write the three files into."),
    ] = Path("deploy/kibana"),
) -> None:
    """Write the Kibana saved objects, each panel's Elasticsearch query and the alert rule for INDEX*."""
    from trackleak.es import dashboard as esdash

    with user_errors():
        name = index or (os.environ.get(esconfig.ENV_INDEX) or "").strip() or esconfig.DEFAULT_INDEX
        esconfig.check_index(name)
        for path in esdash.write_files(out, name):
            typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(es_app, name="es")
