# %preun of the podagent RPM ($1: 0 on removal, 1 on upgrade). Runs under /bin/sh.
# On removal only: stop the service and remove its enablement links, so nothing points at a
# unit that is about to disappear. `disable` also works without a running systemd (it only
# removes symlinks); `stop` needs one. On upgrade the running service is left alone here and
# restarted by the old package's %postun once the new files are in place.
if [ "$1" -eq 0 ]; then
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --no-reload disable podagent.service >/dev/null 2>&1 || :
        if [ -d /run/systemd/system ]; then
            systemctl stop podagent.service >/dev/null 2>&1 || :
        fi
    fi
fi
exit 0
