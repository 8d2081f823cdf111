#!/usr/bin/env python3
"""The local SMTP sink of scripts/bench, scripts/cluster and its drills: accepts every
message on 127.0.0.1:PORT (plain SMTP, no TLS and no AUTH: what
`SMTP_URL=smtp://127.0.0.1:PORT` speaks) and records it in one or both ways:

  --times FILE    appends one line per message to FILE: its Message-ID (without the angle
                  brackets; "-" when it has none) and the moment the sink accepted it
                  (after the final "." of DATA, just before answering 250), in seconds
                  since the epoch. What scripts/bench and bench/report.py read.
  --maildir DIR   writes each message whole to DIR/NNNNNN.eml (under a hidden name, then
                  renamed, so a file that appears is complete; its modification time is
                  the acceptance time), plus one line per message to DIR/index.log: the
                  time, the file, the Message-ID, the recipients and the Subject. What
                  scripts/cluster and its drills (drill.py) read.
  --delay-ms MS   waits MS milliseconds before answering each MAIL command, as a distant
                  mail server would (default 0). The kill9 drill uses it so that the
                  worker it kills holds notices mid-send (claimed, not yet accepted): a
                  worker killed during the wait leaves no message behind, only its claim.

Standard library only (asyncio). Stops on SIGTERM or SIGINT.

usage: smtp_sink.py PORT [--times FILE] [--maildir DIR] [--delay-ms MS]
"""
import argparse
import asyncio
import email
import email.policy
import itertools
import os
import re
import signal
import sys
import time

MESSAGE_ID = re.compile(rb"^message-id:\s*<([^>]*)>", re.IGNORECASE | re.MULTILINE)


class Sink:
    def __init__(self, times, maildir, delay):
        self.times = open(times, "a", buffering=1) if times else None
        self.maildir = maildir
        self.delay = delay
        self.counter = itertools.count(1)

    def accept(self, rcpts, raw):
        """Records one message, at the end of its DATA."""
        accepted = time.time()
        if self.maildir:
            self.store(rcpts, raw)
        if self.times:
            found = MESSAGE_ID.search(raw)
            ident = found.group(1).decode(errors="replace") if found else "-"
            self.times.write(f"{ident} {accepted:.6f}\n")
            self.times.flush()

    def store(self, rcpts, raw):
        name = f"{next(self.counter):06d}.eml"
        part = os.path.join(self.maildir, f".{name}.part")
        with open(part, "wb") as f:
            f.write(raw)
        os.replace(part, os.path.join(self.maildir, name))
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        subject = str(msg.get("subject", "")).replace("\n", " ")
        line = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {name} {msg.get('message-id', '-')} "
            f"to={','.join(rcpts)} subject={subject}\n"
        )
        with open(os.path.join(self.maildir, "index.log"), "a", encoding="utf-8") as f:
            f.write(line)

    async def session(self, reader, writer):
        async def reply(line):
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        rcpts = []
        try:
            await reply("220 mithril-smtp-sink ESMTP")
            while True:
                line = await reader.readline()
                if not line:
                    break
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-mithril-smtp-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                    await writer.drain()
                elif verb == b"MAIL":
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    rcpts = []
                    await reply("250 ok")
                elif verb == b"RCPT":
                    addr = line.decode(errors="replace").split(":", 1)[-1].strip()
                    rcpts.append(addr.split()[0].strip("<>") if addr else "")
                    await reply("250 ok")
                elif verb == b"DATA":
                    await reply("354 end with <CRLF>.<CRLF>")
                    chunks = []
                    while True:
                        data = await reader.readline()
                        if not data or data in (b".\r\n", b".\n"):
                            break
                        # Dot-unstuffing (RFC 5321 4.5.2).
                        chunks.append(data[1:] if data.startswith(b"..") else data)
                    self.accept(rcpts, b"".join(chunks))
                    rcpts = []
                    await reply("250 accepted")
                elif verb == b"QUIT":
                    await reply("221 bye")
                    break
                else:
                    # RSET, NOOP and anything else: accept.
                    await reply("250 ok")
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # CancelledError: the sink stops with this client still connected.
            pass
        finally:
            writer.close()


async def main():
    parser = argparse.ArgumentParser(description="A local SMTP sink on 127.0.0.1.")
    parser.add_argument("port", type=int)
    parser.add_argument("--times", metavar="FILE", help="append 'MESSAGE-ID ACCEPTED' lines to FILE")
    parser.add_argument("--maildir", metavar="DIR", help="keep each message as DIR/NNNNNN.eml")
    parser.add_argument("--delay-ms", type=int, default=0, metavar="MS",
                        help="wait MS ms before answering each MAIL command")
    args = parser.parse_args()
    if not args.times and not args.maildir:
        parser.error("record the mail somewhere: --times FILE, --maildir DIR or both")
    if args.maildir:
        os.makedirs(args.maildir, exist_ok=True)
    sink = Sink(args.times, args.maildir, args.delay_ms / 1000)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(sink.session, "127.0.0.1", args.port)
    kept = [f"mail to {args.maildir}"] if args.maildir else []
    kept += [f"times to {args.times}"] if args.times else []
    kept += [f"MAIL answered after {args.delay_ms} ms"] if args.delay_ms else []
    # On stderr: scripts/bench keeps only that in the sink's log.
    print(f"smtp sink listening on 127.0.0.1:{args.port}, {', '.join(kept)}", file=sys.stderr, flush=True)
    await stop.wait()
    # Not `async with server`: from Python 3.12 on, its exit waits for every client to
    # hang up; a sink stops at once, as the earlier sinks did on 3.11.
    server.close()
    print("smtp sink stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
