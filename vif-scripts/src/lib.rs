//! network hotplug scripts: vif-bridge, vif-route, vif-nat, vif-openvswitch
