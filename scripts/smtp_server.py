"""The SMTP server of Tidewatch's integration tests (aiosmtpd, on 127.0.0.1).

Two listeners, both requiring AUTH (PLAIN / LOGIN) with the user and password
given on the command line:
  --starttls-port  plain SMTP that requires STARTTLS before AUTH and MAIL
  --tls-port       implicit TLS (SMTPS)
Both use the test certificate in fixtures/tls (signed by fixtures/tls/ca.pem).
Every accepted message is written to --maildir as NNNNNN.json:
  {"listener", "login", "mail_from", "rcpt_tos", "data"}
(written to a temporary name and renamed, so readers never see half a file).

  python smtp_server.py --maildir DIR --starttls-port P1 --tls-port P2 \
      --user U --password W --cert fixtures/tls/server.pem --key fixtures/tls/server.key
"""

import argparse
import asyncio
import itertools
import json
import os
import signal
import ssl
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Saver:
    def __init__(self, maildir, listener, counter):
        self.maildir = maildir
        self.listener = listener
        self.counter = counter

    async def handle_DATA(self, server, session, envelope):
        number = next(self.counter)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        record = {
            "listener": self.listener,
            "login": login,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", errors="replace"),
        }
        path = os.path.join(self.maildir, f"{number:06}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as out:
            json.dump(record, out)
        os.replace(path + ".tmp", path)
        return "250 Message accepted for delivery"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return check


def main():
    # The implicit-TLS listener needs auth_require_tls=False (see below), which
    # aiosmtpd warns about; its transport is TLS from the first byte.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    parser = argparse.ArgumentParser()
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--starttls-port", type=int, required=True)
    parser.add_argument("--tls-port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    os.makedirs(args.maildir, exist_ok=True)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    counter = itertools.count(1)
    check = authenticator(args.user, args.password)
    starttls = Controller(
        Saver(args.maildir, "starttls", counter),
        hostname="127.0.0.1",
        port=args.starttls_port,
        tls_context=context,
        require_starttls=True,
        authenticator=check,
        auth_required=True,
    )
    implicit = Controller(
        Saver(args.maildir, "tls", counter),
        hostname="127.0.0.1",
        port=args.tls_port,
        ssl_context=context,
        authenticator=check,
        auth_required=True,
        # aiosmtpd refuses AUTH over a connection it did not see upgrade
        # unless told the transport is already encrypted.
        auth_require_tls=False,
    )
    starttls.start()
    implicit.start()
    print(f"smtp: STARTTLS on 127.0.0.1:{args.starttls_port}, TLS on 127.0.0.1:{args.tls_port}", flush=True)

    loop = asyncio.new_event_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    loop.run_until_complete(stop)
    starttls.stop()
    implicit.stop()


if __name__ == "__main__":
    main()
