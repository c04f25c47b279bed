"""The ``icsfeed`` command: serve, poll, render, check, accounts, db."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from icsfeed.config import Config, ConfigError, load_config
from icsfeed.redact import install_log_redaction, printable, redact
from icsfeed.store import Store, StoreError
from icsfeed.tokens import SECRET_ENV, load_secret_key


class Env:
    """Paths from the global options; config and store are opened on first use."""

    def __init__(self, config_dir: str, data_dir: str) -> None:
        self.config_dir = Path(config_dir)
        self.data_dir = Path(data_dir)

    def config(self) -> Config:
        try:
            return load_config(self.config_dir, self.data_dir)
        except ConfigError as exc:
            for file, path, message in exc.problems:
                echo(f"{file}: {path}: {message}" if path else f"{file}: {message}", err=True)
            raise SystemExit(2) from None

    def store(self, config: Config) -> Store:
        try:
            return Store(config.storage_url, uid_host=config.uid_host, pool_size=config.storage.pool_size,
                         max_overflow=config.storage.max_overflow)
        except StoreError as exc:
            fail(exc)

    def storage_status(self, config: Config, *, strict: bool = True) -> str:
        """Where the storage stands, opened without changing it: ``check`` fails on what
        would stop ``serve`` (no driver, no connection, a schema to upgrade by hand)."""
        from icsfeed.store.migrate import storage_status

        try:
            return storage_status(config.storage_url, strict=strict)
        except StoreError as exc:
            fail(exc)


    def secret(self, config: Config, store: Store | None = None) -> bytes:
        """The token key every process of the installation uses (``accounts``, ``serve``,
        ``poll`` alike): on a server database it is kept in the database."""
        opened = None
        if store is None and not os.environ.get(SECRET_ENV) and not config.storage_url.startswith("sqlite"):
            store = opened = self.store(config)
        try:
            return load_secret_key(config.data_dir, store)
        except StoreError as exc:
            fail(exc)
        finally:
            if opened is not None:
                opened.close()


def fail(exc: Exception) -> NoReturn:
    """A storage error: one line, exit 3."""
    click.echo(f"error: {exc}", err=True)
    raise SystemExit(3)


@click.group()
@click.option("--config", "config_dir", default="config", show_default=True, envvar="ICSFEED_CONFIG",
              type=click.Path(file_okay=False), help="Directory of YAML config files.")
@click.option("--data", "data_dir", default="data", show_default=True, envvar="ICSFEED_DATA",
              type=click.Path(file_okay=False), help="Directory for the database and the secret key.")
@click.option("--log-level", default="INFO", show_default=True, envvar="ICSFEED_LOG_LEVEL",
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.version_option(package_name="icsfeed")
@click.pass_context
def main(ctx: click.Context, config_dir: str, data_dir: str, log_level: str) -> None:
    """Calendar feeds (.ics) of alerts, backups, tickets and maintenance windows."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # icsfeed.store logs what an upgrade did
    logging.getLogger("urllib3").setLevel(logging.INFO)  # its DEBUG lines are noise (and redacted like all)
    install_log_redaction()  # no secret in any log line, from icsfeed, urllib3, requests or waitress
    ctx.obj = Env(config_dir, data_dir)


def echo(text: str, err: bool = False) -> None:
    """click.echo of text from origins: it may hold lone surrogates or characters the
    terminal's encoding lacks (written as escapes, never a UnicodeEncodeError), or
    control characters (escaped, so that an origin cannot drive the terminal)."""
    stream = click.get_text_stream("stderr" if err else "stdout")
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text = printable(text).encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        text = printable(text).encode("ascii", "backslashreplace").decode("ascii")
    click.echo(text, err=err)


@main.command()
@click.pass_obj
def check(env: Env) -> None:
    """Validate the config; exit 2 listing every problem as ``file: path: problem``."""
    config = env.config()
    storage = env.storage_status(config)
    click.echo(f"ok: {len(config.accounts)} accounts, {len(config.teams)} teams, "
               f"{len(config.sources)} sources in {config.config_dir}")
    click.echo(f"storage: {storage}")


@main.command()
@click.option("--once", is_flag=True, help="Poll once and exit (default: keep polling on schedule).")
@click.argument("sources", nargs=-1)
@click.pass_obj
def poll(env: Env, once: bool, sources: tuple[str, ...]) -> None:
    """Poll sources now and print what changed; without --once, run the scheduler alone."""
    started = time.time()  # a source another poller polls after this is not polled again here
    from icsfeed.poller import poll as poll_now

    config = env.config()
    unknown = [s for s in sources if s not in config.sources]
    if unknown:
        echo(f"unknown source(s): {', '.join(unknown)} (known: {', '.join(config.sources)})", err=True)
        raise SystemExit(2)
    store = env.store(config)
    from icsfeed.coordination import Coordinator

    coordinator = Coordinator(store.engine)  # other pollers at work on the same store get their share
    if once:
        try:
            from icsfeed.parallel import default_helpers

            reports = poll_now(config, store, sources or None, coordinator=coordinator, since=started,
                               helpers=default_helpers())
        finally:
            coordinator.close()
        for report in reports:  # already redacted by the poller; once more costs nothing
            echo(redact(report.line(), config.secrets))
            for reason in report.skipped[:10]:
                echo(f"  skipped {redact(reason, config.secrets)}")
        if any(not r.ok for r in reports):
            raise SystemExit(1)
        return
    from icsfeed.live import LiveConfig
    from icsfeed.scheduler import PollScheduler

    scheduler = PollScheduler(LiveConfig(config), store, coordinator=coordinator)
    scheduler.start()
    _wait_for_signal()
    scheduler.shutdown()
    coordinator.close()


@main.command()
@click.argument("feed")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="File to write (default: stdout).")
@click.pass_obj
def render(env: Env, feed: str, output: str | None) -> None:
    """Write the feed of an account or team (ACCOUNT, TEAM, account/ID or team/ID)."""
    from icsfeed.render import render_feeds
    from icsfeed.routing import find_feed

    config = env.config()
    kind, _, name = feed.rpartition("/")
    spec = None
    if kind in ("", "account"):
        spec = find_feed(config, "account", name)
    if spec is None and kind in ("", "team"):
        spec = find_feed(config, "team", name)
    if spec is None:
        click.echo(f"no account or team {feed!r} (accounts: {', '.join(config.accounts)}; teams: {', '.join(config.teams)})", err=True)
        raise SystemExit(2)
    store = env.store(config)
    render_feeds(config, store, only=[spec.feed_id])
    stored = store.get_feed(spec.feed_id)
    assert stored is not None
    if output:
        Path(output).write_bytes(stored.body)
        click.echo(f"wrote {spec.feed_id}: {stored.event_count} events, {len(stored.body)} bytes to {output}", err=True)
    else:
        sys.stdout.buffer.write(stored.body)


@main.command()
@click.pass_obj
def accounts(env: Env) -> None:
    """List accounts and teams with their subscription URLs."""
    from icsfeed.routing import all_feeds, subscription_url

    config = env.config()
    secret = env.secret(config)
    for spec in all_feeds(config):
        label = f"{spec.type} {spec.id}"
        click.echo(f"{label:<24} {spec.name}")
        click.echo(f"  {subscription_url(config, secret, spec)}")


@main.command()
@click.option("--bind", help="host:port to listen on (default: server.bind from config).")
@click.option("--no-scheduler", is_flag=True, help="Serve feeds only (another process polls).")
@click.pass_obj
def serve(env: Env, bind: str | None, no_scheduler: bool) -> None:
    """Serve feeds and pages with a production WSGI server, and poll on schedule."""
    import waitress

    from icsfeed.live import LiveConfig
    from icsfeed.render import render_feeds
    from icsfeed.scheduler import PollScheduler
    from icsfeed.web import create_app

    config = env.config()
    store = env.store(config)
    live = LiveConfig(config)
    secret = env.secret(config, store)
    log = logging.getLogger("icsfeed.serve")
    scheduler = None
    if not no_scheduler:  # a web process alone (--no-scheduler) never renders or writes feeds
        try:
            render_feeds(config, store)
        except StoreError as exc:  # e.g. a read-only data dir: feeds already rendered are still served
            log.error("cannot render feeds at start: %s", exc)
        scheduler = PollScheduler(live, store)
        scheduler.start()
    host, port = (bind or config.server.bind).rsplit(":", 1)
    app = create_app(live, store, secret)
    log.info("serving on http://%s:%s/ (base URL %s)", host, port, config.server.base_url)
    if config.server.trusted_proxies:
        log.info("forwarded headers are believed from %s only", ", ".join(config.server.trusted_proxies))
    _print_admin_login(config, host, port)
    server = waitress.create_server(app, host=host.strip("[]"), port=int(port), threads=config.server.threads,
                                    ident="icsfeed",
                                    # the largest body icsfeed reads is a webhook's (at most 64 MiB):
                                    # waitress refuses bigger ones before spooling them to disk
                                    max_request_body_size=65 * 1024 * 1024,
                                    # waitress trusts no proxy and must not strip X-Forwarded-*:
                                    # icsfeed.web.proxy applies them for server.trusted_proxies and
                                    # removes them for every other peer
                                    clear_untrusted_proxy_headers=False)
    _stop_on_signal(server.close)
    try:
        server.run()
    except (OSError, ValueError) as exc:
        if not getattr(server, "_stopping", False):
            log.error("server stopped: %s", exc)
    finally:
        if scheduler is not None:
            scheduler.shutdown()
        store.close()


def _print_admin_login(config: Config, host: str, port: str) -> None:
    """Without admin credentials, the admin pages need the generated token: print the link."""
    from icsfeed.web.admin import admin_auth, admin_token_path, load_admin_token, login_link

    log = logging.getLogger("icsfeed.serve")
    auth = admin_auth(config)
    if auth.mode == "half-configured":
        log.warning("admin credentials are half-configured (%s): admin pages refuse everyone", auth.where)
        return
    if auth.mode != "token":
        return
    try:
        token = load_admin_token(config.data_dir)
    except OSError as exc:
        log.error("no admin credentials and no admin token (%s): admin pages refuse everyone", exc)
        return
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host.strip("[]"), host.strip("[]"))
    local = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    links = [login_link(local, token)]
    if config.server.base_url.rstrip("/") != local:
        links.append(login_link(config.server.base_url, token))
    click.echo("Admin pages (subscribe, status, metrics) need a login; open\n"
               + "".join(f"    {link}\n" for link in links)
               + f"(the token is kept in {admin_token_path(config.data_dir)}; set ICSFEED_ADMIN_USER and "
               "ICSFEED_ADMIN_PASSWORD to log in with a password instead)")


@main.group()
def db() -> None:
    """The database's schema: where it stands, and upgrading it."""


@db.command("current")
@click.pass_obj
def db_current(env: Env) -> None:
    """Print the database's schema revision against the one this icsfeed needs."""
    click.echo(env.storage_status(env.config(), strict=False))


@db.command("upgrade")
@click.pass_obj
def db_upgrade(env: Env) -> None:
    """Upgrade the database's schema to this icsfeed's (run it once, before starting the
    processes of a new version that share a PostgreSQL database)."""
    from icsfeed.store.database import redact_url
    from icsfeed.store.migrate import upgrade_url

    config = env.config()
    try:
        before, after = upgrade_url(config.storage_url)
    except StoreError as exc:
        fail(exc)
    where = redact_url(config.storage_url)
    if before == after:
        click.echo(f"{where}: already at {after.describe()}")
    else:
        click.echo(f"{where}: upgraded from {before.revision or 'empty'} to {after.describe()}")


@db.command("copy")
@click.option("--from", "source_url", required=True, metavar="URL",
              help="The database to copy from, e.g. sqlite:///data/icsfeed.db.")
@click.pass_obj
def db_copy(env: Env, source_url: str) -> None:
    """Copy every event, feed and source state from URL into the configured storage (an
    empty database), with the secret key, so subscription URLs keep working."""
    from icsfeed.store.copy import copy_database
    from icsfeed.store.database import redact_url
    from icsfeed.tokens import load_secret_key

    config = env.config()
    try:
        source = Store(source_url, uid_host=config.uid_host)
    except StoreError as exc:
        fail(exc)
    target = env.store(config)
    try:
        key = None
        if not source.shares_secret and not os.environ.get(SECRET_ENV):
            key = load_secret_key(config.data_dir)  # the key the SQLite installation's URLs were made with
        copied = copy_database(source, target, secret_key=key)
    except StoreError as exc:
        fail(exc)
    finally:
        source.close()
        target.close()
    click.echo(f"copied {copied.line()} from {redact_url(source_url)} to {redact_url(config.storage_url)}")
    if key is not None and target.shares_secret:
        click.echo(f"  and the secret key of {config.data_dir / 'secret_key'}: subscription URLs stay the same")


def _stop_on_signal(stop: Any) -> None:
    def handler(signum: int, _frame: Any) -> None:
        logging.getLogger("icsfeed.serve").info("signal %d: shutting down", signum)
        stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _wait_for_signal() -> None:
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    while not stopped.wait(1.0):
        pass
