#!/usr/bin/python3
"""Uploads a body RUNS times and prints one status code per line ("000 <error>"
when no status was read): Python's own HTTP clients against the proxy, for
the early-answer tests. HTTP/1.1 through the standard library's
http.client (a fresh connection each time; it sends the whole body before
reading the answer); HTTP/2 through httpx with h2 (Debian: python3-httpx,
python3-h2).

usage: upload.py {1.1|2} URL CA_PEM SIZE RUNS [HEADER: VALUE ...]
"""

import http.client
import ssl
import sys
import urllib.parse


def http1(url, ca, body, headers):
    u = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=context, timeout=30)
    try:
        conn.request("POST", u.path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return str(resp.status)
    finally:
        conn.close()


def http2(url, ca, body, headers):
    import httpx

    with httpx.Client(http1=False, http2=True, verify=ca, timeout=30) as client:
        resp = client.post(url, content=body, headers=headers)
        if resp.http_version != "HTTP/2":
            return f"000 spoke {resp.http_version}"
        return str(resp.status_code)


def main():
    version, url, ca, size, runs = sys.argv[1:6]
    headers = dict(h.split(": ", 1) for h in sys.argv[6:])
    body = b"x" * int(size)
    send = http1 if version == "1.1" else http2
    for _ in range(int(runs)):
        try:
            print(send(url, ca, body, headers), flush=True)
        except Exception as e:  # noqa: BLE001 - reported to the test
            print(f"000 {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
    main()
