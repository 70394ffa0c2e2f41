-- With store encryption: keyed hashes of every e-mail address an event names besides its contact
-- (data.buyer.email, …), space-separated, so erasure finds them without reading the payload.
ALTER TABLE events ADD COLUMN contacts TEXT;
