#!/bin/sh
# LOCAL USE ONLY: a self-signed certificate for the compose network (the reader there runs with
# BOUNCE_IMAP_TLS_VERIFY=false), made once per container, then Dovecot in the foreground (PID 1, so that
# `docker compose stop` reaches it).
set -eu
tls=/etc/dovecot/tls
if [ ! -s "$tls/cert.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=dovecot" \
    -addext "subjectAltName=DNS:dovecot,DNS:localhost" \
    -keyout "$tls/key.pem" -out "$tls/cert.pem" 2>/dev/null
  chmod 0600 "$tls/key.pem"
fi
exec /usr/sbin/dovecot -F -c /etc/dovecot/dovecot.conf
