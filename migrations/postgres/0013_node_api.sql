-- Where each node's API answers the other nodes (http.advertise): a processor's detokenize
-- on one node asks the node holding the card's security code for it there
-- (src/runtime/peer.rs). NULL when a node advertises none.
ALTER TABLE nodes ADD COLUMN api TEXT;
