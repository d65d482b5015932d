#!/bin/sh
# minivmm kernel-test guest init (PID 1), run by the kernel as init= from the host's root, which is
# mounted read-only over 9p. It mounts the pseudo file systems, mounts the run's writable results
# share, reads guest.env from it (written by tools/kernel/main.ts), mounts the repo's own share at
# its host path (the build copy the suite runs from, in the results share, links its node_modules
# there), creates the vdpa_sim devices, runs the conformance suite on each
# /dev/vhost-vdpa-N, then the end-to-end stage (minivmm on nested KVM, live-updated, on both
# devices; tools/kernel/e2e.ts), and powers the machine off. MINIVMM_STAGES picks the stages.
#
# Lines starting with "@@minivmm " are markers read by the host side; everything else the suite
# prints is passed through. Never exit: PID 1 exiting is a kernel panic.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp TERM=dumb LANG=C.UTF-8

say() { echo "@@minivmm $*"; }

off() {
	sync
	say "poweroff"
	echo o > /proc/sysrq-trigger 2>/dev/null
	sleep 1
	# ACPI power-off did not take: reboot, which -no-reboot turns into QEMU's exit.
	echo b > /proc/sysrq-trigger 2>/dev/null
	busybox reboot -f 2>/dev/null
	while :; do sleep 60; done
}

mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /dev/pts /dev/shm /run/results
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
echo 1 > /proc/sys/kernel/sysrq 2>/dev/null
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none results /run/results; then
	say "error cannot mount the results share"
	off
fi
if [ ! -r /run/results/guest.env ]; then
	say "error no guest.env in the results share"
	off
fi
. /run/results/guest.env
hostname vdpaguest 2>/dev/null
# The repo on its own share, at its host path: the tmpfs mounts above may hide it (a clone in /tmp).
mkdir -p "$MINIVMM_REPO" 2>/dev/null
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro repo "$MINIVMM_REPO"; then
	say "error cannot mount the repo share at $MINIVMM_REPO"
	off
fi
say "booted $(uname -r) uptime $(cut -d' ' -f1 /proc/uptime)"
if [ -c /dev/kvm ]; then
	say "kvm /dev/kvm present; kvm_amd nested=$(cat /sys/module/kvm_amd/parameters/nested 2>/dev/null) npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)"
else
	say "kvm no /dev/kvm ($(grep -c -w svm /proc/cpuinfo) CPUs with svm)"
fi

# Devices: "mgmtdev:name" pairs, e.g. "vdpasim_net:vdpa0 vdpasim_blk:vdpa1".
say "mgmtdevs $(vdpa mgmtdev show 2>&1 | tr '\n' ' ')"
for pair in $MINIVMM_DEVICES; do
	mgmt=${pair%%:*}
	name=${pair#*:}
	if out=$(vdpa dev add mgmtdev "$mgmt" name "$name" 2>&1); then
		node=$(ls -d /sys/bus/vdpa/devices/"$name"/vhost-vdpa-* 2>/dev/null | head -n1)
		node=${node##*/}
		if [ -n "$node" ] && [ -c "/dev/$node" ]; then
			say "device $name $mgmt /dev/$node"
		else
			say "nodevice $name $mgmt no /dev/vhost-vdpa-N for it ($(ls /dev | grep vhost | tr '\n' ' '))"
		fi
	else
		say "nodevice $name $mgmt vdpa dev add failed: $(echo "$out" | tr '\n' ' ')"
	fi
done
say "nodes $(ls /dev/vhost-vdpa-* 2>/dev/null | tr '\n' ' ')"

nodeof() {
	n=$(ls -d /sys/bus/vdpa/devices/"$1"/vhost-vdpa-* 2>/dev/null | head -n1)
	n=${n##*/}
	[ -n "$n" ] && [ -c "/dev/$n" ] && echo "/dev/$n"
}

case " $MINIVMM_STAGES " in *" conformance "*)
	for pair in $MINIVMM_DEVICES; do
		name=${pair#*:}
		node=$(nodeof "$name") || continue
		say "run $name $node $(cut -d' ' -f1 /proc/uptime)"
		cd /tmp
		# shellcheck disable=SC2086
		"$MINIVMM_NODE" "$MINIVMM_BUILD/dist/tools/conformance/main.js" --device "$node" \
			--json "/run/results/$name.json" $MINIVMM_SUITE_ARGS 2>&1
		say "exit $name $? $(cut -d' ' -f1 /proc/uptime)"
	done
esac

case " $MINIVMM_STAGES " in *" e2e "*)
	net='' blk=''
	for pair in $MINIVMM_DEVICES; do
		case ${pair%%:*} in
		vdpasim_net) net=$(nodeof "${pair#*:}") ;;
		vdpasim_blk) blk=$(nodeof "${pair#*:}") ;;
		esac
	done
	if [ -z "$net" ] || [ -z "$blk" ]; then
		say "e2e-skip netblk needs a vdpa_sim net and a blk device (net '$net', blk '$blk')"
	else
		say "e2e-run $net $blk $(cut -d' ' -f1 /proc/uptime)"
		cd /tmp
		"$MINIVMM_NODE" "$MINIVMM_BUILD/dist/tools/kernel/e2e.js" --net "$net" --blk "$blk" --dma "$MINIVMM_DMA" \
			--json /run/results/e2e.json --work /tmp/minivmm-e2e 2>&1
		status=$?
		cp /tmp/minivmm-e2e/vmm.log /run/results/e2e-vmm.log 2>/dev/null
		say "e2e-exit $status $(cut -d' ' -f1 /proc/uptime)"
	fi
esac

sync
say "end $(cut -d' ' -f1 /proc/uptime)"
off
