"""The ``icsfeed`` command: serve, poll, render, check, accounts."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from icsfeed.config import Config, ConfigError, load_config
from icsfeed.store import Store, StoreError
from icsfeed.tokens import load_secret_key


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
                click.echo(f"{file}: {path}: {message}" if path else f"{file}: {message}", err=True)
            raise SystemExit(2) from None

    def store(self, config: Config) -> Store:
        try:
            return Store(config.storage_url, uid_host=config.uid_host)
        except StoreError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(3) from None


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
    logging.getLogger("urllib3").setLevel(logging.INFO)  # its DEBUG lines carry full URLs: query-string secrets
    ctx.obj = Env(config_dir, data_dir)


@main.command()
@click.pass_obj
def check(env: Env) -> None:
    """Validate the config; exit non-zero naming file, path and problem."""
    config = env.config()
    click.echo(f"ok: {len(config.accounts)} accounts, {len(config.teams)} teams, "
               f"{len(config.sources)} sources in {config.config_dir}")


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
        click.echo(f"unknown source(s): {', '.join(unknown)} (known: {', '.join(config.sources)})", err=True)
        raise SystemExit(2)
    store = env.store(config)
    from icsfeed.coordination import Coordinator

    coordinator = Coordinator(store.engine)  # other pollers at work on the same store get their share
    if once:
        try:
            reports = poll_now(config, store, sources or None, coordinator=coordinator, since=started)
        finally:
            coordinator.close()
        for report in reports:
            click.echo(report.line())
            for reason in report.skipped[:10]:
                click.echo(f"  skipped {reason}")
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
    secret = load_secret_key(config.data_dir)
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
    secret = load_secret_key(config.data_dir)
    log = logging.getLogger("icsfeed.serve")
    try:
        render_feeds(config, store)
    except StoreError as exc:  # e.g. a read-only data dir: feeds already rendered are still served
        log.error("cannot render feeds at start: %s", exc)
    scheduler = None
    if not no_scheduler:
        scheduler = PollScheduler(live, store)
        scheduler.start()
    host, port = (bind or config.server.bind).rsplit(":", 1)
    app = create_app(live, store, secret)
    log.info("serving on http://%s:%s/ (base URL %s)", host, port, config.server.base_url)
    server = waitress.create_server(app, host=host.strip("[]"), port=int(port), threads=config.server.threads,
                                    ident="icsfeed",
                                    # keep X-Forwarded-* visible: the admin pages treat a proxied request as
                                    # not local (nothing else reads them; no proxy is trusted)
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
