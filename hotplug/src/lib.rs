//! hotplug runtime shared by every script: invocation, error contract, logging, locks, config
