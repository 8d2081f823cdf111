#!/usr/bin/env python3
"""A local SMTP sink for P5 of scripts/bench: accepts every message and records, per
message, its Message-ID and the moment the sink accepted it (after the final "." of DATA,
just before answering 250). Standard library only; listens on 127.0.0.1.

usage: smtp_sink.py PORT OUTFILE
"""
import asyncio
import re
import sys
import time

MESSAGE_ID = re.compile(rb"^message-id:\s*<([^>]*)>", re.IGNORECASE | re.MULTILINE)


async def session(reader, writer, out):
    async def reply(line):
        writer.write(line.encode() + b"\r\n")
        await writer.drain()

    await reply("220 bench-sink ESMTP")
    while True:
        line = await reader.readline()
        if not line:
            break
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            writer.write(b"250-bench-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
            await writer.drain()
        elif verb == b"DATA":
            await reply("354 end with <CRLF>.<CRLF>")
            chunks = []
            while True:
                data = await reader.readline()
                if not data or data in (b".\r\n", b".\n"):
                    break
                chunks.append(data)
            accepted = time.time()
            found = MESSAGE_ID.search(b"".join(chunks))
            ident = found.group(1).decode(errors="replace") if found else "-"
            out.write(f"{ident} {accepted:.6f}\n")
            out.flush()
            await reply("250 accepted")
        elif verb == b"QUIT":
            await reply("221 bye")
            break
        else:
            # MAIL, RCPT, RSET, NOOP and anything else: accept.
            await reply("250 ok")
    writer.close()


async def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    out = open(path, "a", buffering=1)
    server = await asyncio.start_server(
        lambda r, w: session(r, w, out), "127.0.0.1", port
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
