//! One link lookup by name plus one MTU change, through rtnetlink on a tokio current-thread runtime.
use futures::TryStreamExt;
use rtnetlink::{new_connection, LinkUnspec};

fn main() {
    let name = std::env::args().nth(1).expect("link name");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (conn, handle, _) = new_connection().expect("connection");
        tokio::spawn(conn);
        let link = handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
            .expect("get")
            .expect("link");
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(link.header.index)
                    .mtu(1400)
                    .build(),
            )
            .execute()
            .await
            .expect("set");
    });
}
