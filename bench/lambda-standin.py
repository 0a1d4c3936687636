#!/usr/bin/env python3
"""A stand-in for Lambda's Invoke API that answers every call at once, for measuring how
many invocations one fanout coordinator can dispatch (the emulator and real workers are
slower than the coordinator on this machine). It answers a ping as a fanout worker and a
batch with every attempt succeeded, no outputs. Usage: lambda-standin.py PORT"""
import asyncio, json, sys, time

PONG = json.dumps({"fanout": "stand-in", "protocol": 1}).encode()


def answer(body):
    payload = json.loads(body)
    if "ping" in payload:
        return PONG
    request = payload["work"]
    now = int(time.time() * 1000)
    results = [
        {
            "shard": order["shard"]["id"], "attempt": order["attempt"], "outcome": {"kind": "ok"},
            "cold_start": False, "started_ms": now, "finished_ms": now, "elapsed_ms": 0,
            "stdout": "", "stdout_truncated": False, "stderr": "", "stderr_truncated": False,
            "outputs": {"Ok": []},
        }
        for order in request["orders"]
    ]
    return json.dumps({"protocol": 1, "environment": "stand-in", "memory_mb": 2048,
                       "duration_ms": 1, "results": results}).encode()


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            out = answer(body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Amz-Executed-Version: $LATEST\r\n"
                         b"Content-Length: " + str(len(out)).encode() + b"\r\n\r\n" + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


asyncio.run(main(int(sys.argv[1])))
