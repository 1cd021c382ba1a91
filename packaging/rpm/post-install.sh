# %post of the podagent RPM ($1: 1 on install, 2 on upgrade). Runs under /bin/sh.
# The state directory must exist, private to root, before the first start (the unit's
# StateDirectory= creates it too, but `podagent check` or a manual run may come first).
mkdir -p /var/lib/podagent
chmod 0700 /var/lib/podagent
# Make systemd read the new or changed unit. The service is not enabled or started here: it
# needs /opt/kaloom/etc/podagent-kubeconfig.yaml first (see the README, "Install").
# Without a running systemd (a container, a chroot, an image build) there is nothing to reload.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
