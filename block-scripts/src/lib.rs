//! block hotplug scripts: block, block-dummy, block-iscsi, block-nbd
