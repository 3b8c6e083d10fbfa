DROP FUNCTION orgbase.gdpr_cancel_member(uuid);
