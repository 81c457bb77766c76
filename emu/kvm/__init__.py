"""The KVM layer: devices and state the in-kernel hypervisor keeps for a VM."""
