# %postun of the podagent RPM ($1: 0 on removal, 1 on upgrade). Runs under /bin/sh.
# On removal, the package's directories go once empty (the package cannot own directories, see
# Cargo.toml); /var/lib/podagent and the shared /opt/kaloom directories stay when something
# else is in them, and podagent's records in /var/lib/podagent are kept.
if [ "$1" -eq 0 ]; then
    for dir in /opt/kaloom/share/podagent/scripts /opt/kaloom/share/podagent/manifests \
        /opt/kaloom/share/podagent/examples /opt/kaloom/share/podagent /opt/kaloom/share \
        /opt/kaloom/bin /opt/kaloom/etc /opt/kaloom; do
        rmdir "$dir" 2>/dev/null || :
    done
fi
# After removal or upgrade systemd must re-read its units; on upgrade a running podagent is
# restarted so the new binary takes over (try-restart leaves a stopped service stopped).
# --no-block: podagent reports ready only once the API server answered, and an unreachable API
# server must not hang the rpm transaction.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart --no-block podagent.service >/dev/null 2>&1 || :
    fi
fi
exit 0
