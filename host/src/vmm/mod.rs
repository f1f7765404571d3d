//! The KVM micro-VMM (see issue: boot a Linux kernel on KVM, firmware-style).
