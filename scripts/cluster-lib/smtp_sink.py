#!/usr/bin/env python3
"""The local SMTP sink of scripts/cluster: accepts every message on 127.0.0.1:PORT and
writes each one whole to MAILDIR/NNNNNN.eml (written under a hidden name, then renamed,
so a file that appears is complete), plus one line per message to MAILDIR/index.log:
the time, the Message-ID, the recipients and the Subject.

Standard library only (asyncio), like bench/smtp_sink.py, which records timings and
discards the messages; this one keeps them, so a drill or a person can read the notices.
Plain SMTP, no TLS and no AUTH: what `SMTP_URL=smtp://127.0.0.1:PORT` speaks.

usage: smtp_sink.py PORT MAILDIR
"""
import asyncio
import email
import email.policy
import itertools
import os
import signal
import sys
import time

COUNTER = itertools.count(1)


def store(maildir, rcpts, raw):
    n = next(COUNTER)
    name = f"{n:06d}.eml"
    part = os.path.join(maildir, f".{name}.part")
    with open(part, "wb") as f:
        f.write(raw)
    os.replace(part, os.path.join(maildir, name))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    subject = str(msg.get("subject", "")).replace("\n", " ")
    line = (
        f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {name} {msg.get('message-id', '-')} "
        f"to={','.join(rcpts)} subject={subject}\n"
    )
    with open(os.path.join(maildir, "index.log"), "a", encoding="utf-8") as f:
        f.write(line)


async def session(reader, writer, maildir):
    async def reply(line):
        writer.write(line.encode() + b"\r\n")
        await writer.drain()

    rcpts = []
    try:
        await reply("220 mithril-cluster-sink ESMTP")
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-mithril-cluster-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                await writer.drain()
            elif verb == b"MAIL":
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
                store(maildir, rcpts, b"".join(chunks))
                rcpts = []
                await reply("250 accepted")
            elif verb == b"QUIT":
                await reply("221 bye")
                break
            else:
                # RSET, NOOP and anything else: accept.
                await reply("250 ok")
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main():
    port, maildir = int(sys.argv[1]), sys.argv[2]
    os.makedirs(maildir, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(
        lambda r, w: session(r, w, maildir), "127.0.0.1", port
    )
    print(f"smtp sink listening on 127.0.0.1:{port}, mail to {maildir}", flush=True)
    async with server:
        await stop.wait()
    print("smtp sink stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
